/* hiredis reader object functions that build Python objects directly (bytes,
 * int, None, list, str for a status, RedisResponseError for an error), for
 * hiredis 0.14 and 1.x. */
#include "redis/internal.h"

static void *reply_attach(const redisReadTask *task, PyObject *obj)
{
    if (obj != NULL && task->parent != NULL) {
        PyObject *parent = task->parent->obj; // borrowed
        PyList_SET_ITEM(parent, task->idx, obj);
    }
    return obj;
}

static void *reply_string(const redisReadTask *task, char *s, size_t len)
{
    CmRedisConnObject *c = task->privdata;
    PyObject *obj;
    if (task->type == REDIS_REPLY_ERROR) {
        PyObject *msg = PyUnicode_DecodeUTF8(s, (Py_ssize_t)len, "replace");
        obj = msg ? PyObject_CallOneArg(c->net.st->redis.ResponseError, msg) : NULL;
        Py_XDECREF(msg);
    } else if (task->type == REDIS_REPLY_STATUS) {
        obj = PyUnicode_DecodeUTF8(s, (Py_ssize_t)len, "replace");
    } else {
        obj = PyBytes_FromStringAndSize(s, (Py_ssize_t)len);
    }
    if (obj == NULL)
        PyErr_Clear(); /* the reader reports out of memory */
    return reply_attach(task, obj);
}

/* 1 if an aggregate of n elements is within the client's max_reply_elements:
 * PyList_New(n) reserves 8n bytes before a single element has arrived. */
static int reply_elements_ok(const redisReadTask *task, size_t n)
{
    const CmRedisConnObject *c = task->privdata;
    const CmRedisPool *p = cm_redis_conn_pool(c); // borrowed
    Py_ssize_t max = p != NULL ? p->cfg->max_reply_elements : CM_REDIS_MAX_ELEMENTS;
    return cm_resp_elements_ok(n, (size_t)max);
}

/* hiredis 1.x passes an array's length as a size_t, 0.14 as an int (a nil
 * array goes to createNil in both) */
#if HIREDIS_MAJOR >= 1
typedef size_t CmReplyLen;
#else
typedef int CmReplyLen;
#endif

static void *reply_array(const redisReadTask *task, CmReplyLen n)
{
    Py_ssize_t len = (Py_ssize_t)n;
    PyObject *obj;
    /* NULL fails the reader (REDIS_ERR_OOM), and conn_on_read the connection */
    if (len < 0 || !reply_elements_ok(task, (size_t)len))
        return NULL;
    obj = PyList_New(len);
    if (obj == NULL)
        PyErr_Clear();
    return reply_attach(task, obj);
}

static void *reply_integer(const redisReadTask *task, long long v)
{
    PyObject *obj = PyLong_FromLongLong(v);
    if (obj == NULL)
        PyErr_Clear();
    return reply_attach(task, obj);
}

static void *reply_nil(const redisReadTask *task) { return reply_attach(task, Py_NewRef(Py_None)); }

#if HIREDIS_MAJOR >= 1
/* RESP3 only (we speak RESP2): hiredis 1.x would otherwise put a tag, not an
 * object, where a double or a boolean came */
static void *reply_double(const redisReadTask *task, double v, char *s, size_t len)
{
    (void)s, (void)len;
    PyObject *obj = PyFloat_FromDouble(v);
    if (obj == NULL)
        PyErr_Clear();
    return reply_attach(task, obj);
}

static void *reply_bool(const redisReadTask *task, int v)
{
    return reply_attach(task, PyBool_FromLong(v));
}
#endif

static void reply_free(void *obj) { Py_XDECREF((PyObject *)obj); }

/* by name: hiredis 1.x has more slots than 0.14, in another order */
redisReplyObjectFunctions cm_redis_reply_fns = {
    .createString = reply_string,
    .createArray = reply_array,
    .createInteger = reply_integer,
    .createNil = reply_nil,
#if HIREDIS_MAJOR >= 1
    .createDouble = reply_double,
    .createBool = reply_bool,
#endif
    .freeObject = reply_free,
};
