/* MongoClient as a remote storage of the singleflight (flight/remote.h):
 * a flight's read or fill is a request whose future is a flight wait
 * (flight/wait.h, type MongoFlightWait). A request can fail while it is
 * being queued (a value too large for a message): the wait is made held,
 * so that an outcome that came meanwhile is told when the flight has the op
 * (unref), never inside the flight's own get/set call. */
#ifdef CM_HAVE_BSON
#include "flight/wait.h"
#include "mongo/mongo.h"

static const CmRemoteOps mongo_remote_ops;

/* 1 if storage is a MongoClient whose method `name` is the type's own. */
static int mongo_direct(CmState *st, PyObject *storage, PyObject *name)
{
    PyTypeObject *base = (PyTypeObject *)st->mongo.ClientType;
    return PyObject_TypeCheck(storage, base) && cm_remote_method_is_own(storage, base, name);
}

static CmRemoteOp *mongo_get(PyObject *storage, PyObject *node, PyObject *ser, PyObject *loop,
                             PyObject *call)
{
    (void)loop; /* the storage follows the running loop */
    CmFlightWaitObject *w =
        cm_flight_wait_new(((CmMongoClientObject *)storage)->st, &mongo_remote_ops, call, 1);
    if (w == NULL)
        return NULL;
    int64_t load_ns;
    unsigned int fresh = cm_remote_call_fresh(call, &load_ns);
    if (cm_mongo_get_for(storage, node, ser, (PyObject *)w, fresh) < 0) {
        Py_DECREF(w);
        return NULL;
    }
    return (CmRemoteOp *)w;
}

static CmRemoteOp *mongo_set(PyObject *storage, PyObject *node, PyObject *value, PyObject *ttl,
                             PyObject *ser, PyObject *loop, PyObject *call)
{
    (void)loop;
    CmFlightWaitObject *w =
        cm_flight_wait_new(((CmMongoClientObject *)storage)->st, &mongo_remote_ops, call, 1);
    if (w == NULL)
        return NULL;
    int64_t load_ns = 0;
    if (cm_remote_call_fresh(call, &load_ns) == 0)
        load_ns = 0;
    if (cm_mongo_set_for(storage, node, value, ttl, ser, (PyObject *)w, load_ns,
                         cm_remote_call_stale_ns(call)) < 0) {
        Py_DECREF(w);
        return NULL;
    }
    return (CmRemoteOp *)w;
}

static PyObject *mongo_get_all_aged(CmState *st, PyObject *storage, PyObject *nodes, PyObject *ser)
{
    (void)st;
    return cm_mongo_get_all_aged(storage, nodes, ser);
}

void cm_mongo_flight_age(CmMongoReq *r, int64_t updated_ms, int64_t load_ns)
{
    cm_flight_wait_age(r->fut, updated_ms, 1000000, load_ns); /* r->fut: cm_mongo_get_for's wait */
}

static const CmRemoteOps mongo_remote_ops = {
    .direct = mongo_direct,
    .get = mongo_get,
    .set = mongo_set,
    .handoff = cm_flight_wait_handoff,
    .unref = cm_flight_wait_unref,
    .attach_waiter = NULL,
    .ages = 1,
    .get_all_aged = mongo_get_all_aged,
};

static PyType_Spec wait_spec = CM_FLIGHT_WAIT_SPEC("cacheme._core.MongoFlightWait");

int cm_mongo_remote_init(PyObject *mod, CmState *st)
{
    PyObject *types[] = {st->mongo.ClientType};
    /* _MongoFlightWait on the module for tests */
    return cm_flight_wait_register(mod, st, &wait_spec, "_MongoFlightWait", &mongo_remote_ops,
                                   types, 1);
}
#endif
