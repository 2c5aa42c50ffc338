/* The transport of a MongoDB storage beyond plain TCP: TLS (the options of
 * MongoDB's connection string spec, mapped by cacheme/storages/mongo.py to
 * net/tls.h's context) and busy polling for replies (net/busypoll.h, the
 * same option and rule as Redis and SQL). conn.c starts TLS after each TCP
 * connect (net/stream.h) and calls cm_mongo_transport_sent at the end of a
 * flush. */
#ifdef CM_HAVE_BSON
#include "mongo/mongo.h"

#include "net/busypoll.h"

/* A str item of d, or NULL (absent or None); -1 with TypeError. */
static int dict_str(PyObject *d, const char *name, const char **out)
{
    PyObject *v = PyDict_GetItemString(d, name); // borrowed
    *out = NULL;
    if (v == NULL || v == Py_None)
        return 0;
    if (!PyUnicode_Check(v)) {
        PyErr_Format(PyExc_TypeError, "MongoClient: tls %s must be a str, not %.100s", name,
                     Py_TYPE(v)->tp_name);
        return -1;
    }
    *out = PyUnicode_AsUTF8(v);
    return *out ? 0 : -1;
}

/* A true value of d[name] (absent: 0); -1 with an exception. */
static int dict_flag(PyObject *d, const char *name)
{
    PyObject *v = PyDict_GetItemString(d, name); // borrowed
    return v == NULL ? 0 : PyObject_IsTrue(v);
}

int cm_mongo_transport_parse(PyObject *tls, PyObject *busy_poll, CmMongoTransport *t)
{
    t->tls.ctx = NULL;
    t->tls.bio = NULL;
    t->tls.check_host = 0;
    if (cm_busypoll_parse(busy_poll, &t->spin) < 0)
        return -1;
    if (tls == NULL || tls == Py_None)
        return 0;
    if (!PyDict_Check(tls)) {
        PyErr_Format(PyExc_TypeError, "MongoClient: tls must be None or a dict, not %.100s",
                     Py_TYPE(tls)->tp_name);
        return -1;
    }
    CmTlsOptions o = {0};
    o.ca_certs_name = "tlsCAFile";
    o.certfile_name = "tlsCertificateKeyFile";
    if (dict_str(tls, "ca_file", &o.ca_certs) < 0 ||
        dict_str(tls, "certificate_key_file", &o.certfile) < 0)
        return -1;
    int invalid_certs = dict_flag(tls, "allow_invalid_certificates");
    int invalid_hosts = dict_flag(tls, "allow_invalid_hostnames");
    if (invalid_certs < 0 || invalid_hosts < 0)
        return -1;
    o.verify = !invalid_certs;
    o.check_hostname = !invalid_hosts;
    return cm_tls_context_init(&t->tls, &o, "mongodb");
}

void cm_mongo_transport_set(CmMongoClientObject *cl, CmMongoTransport *t)
{
    cm_tls_context_fini(&cl->tls);
    cl->tls = t->tls;
    t->tls.ctx = NULL;
    cl->spin.limit = t->spin;
}

void cm_mongo_transport_fini(CmMongoClientObject *cl) { cm_tls_context_fini(&cl->tls); }

int cm_mongo_transport_traverse(CmMongoClientObject *cl, visitproc visit, void *arg)
{
    return cm_busypoll_traverse(&cl->spin, visit, arg);
}

void cm_mongo_transport_clear(CmMongoClientObject *cl) { cm_busypoll_clear(&cl->spin); }

PyObject *cm_mongo_busy_poll_info(PyObject *self, PyObject *Py_UNUSED(unused))
{
    CmMongoClientObject *cl = (CmMongoClientObject *)self;
    return Py_BuildValue("{sd,sn,sn}", "busy_poll", cl->spin.limit, "busy_poll_hits", cl->spin.hits,
                         "busy_poll_timeouts", cl->spin.misses);
}

static CmNetPool *client_pool(void *owner) { return &((CmMongoClientObject *)owner)->pool; }

void cm_mongo_transport_sent(CmMongoConnObject *c)
{
    CmMongoClientObject *cl = cm_mongo_conn_client(c); // borrowed
    if (cl != NULL && c->net.state == CM_MONGO_READY && c->npend > 0)
        cm_net_pool_spin_sent(client_pool, (PyObject *)cl, &cl->spin, c->net.loop);
}
#endif
