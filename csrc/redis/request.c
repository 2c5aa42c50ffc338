/* RESP encoding of a pending entry's request. */
#include "redis/internal.h"
#include <string.h>

static int arg_str(CmBuf *b, PyObject *s)
{
    Py_ssize_t n;
    const char *p;
    if (PyBytes_Check(s)) {
        p = PyBytes_AS_STRING(s);
        n = PyBytes_GET_SIZE(s);
    } else if ((p = PyUnicode_AsUTF8AndSize(s, &n)) == NULL) {
        return -1;
    }
    if (cm_resp_arg(b, p, (size_t)n) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static int arg_lit(CmBuf *b, const char *s)
{
    if (cm_resp_arg(b, s, strlen(s)) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static int begin(CmBuf *b, size_t argc)
{
    if (cm_resp_begin(b, argc) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

/* Append the request of an entry; all or nothing. */
int cm_redis_encode_entry(CmBuf *b, const CmRedisEntry *e)
{
    size_t mark = cm_buf_mark(b);
    CmRedisOp *op = e->op;
    switch (e->cmd) {
    case CM_CMD_GET:
        if (begin(b, 2) < 0 || arg_lit(b, "GET") < 0 || arg_str(b, cm_redis_op_key(op, e->pos)) < 0)
            goto fail;
        break;
    case CM_CMD_MGET:
        if (begin(b, 1 + (size_t)e->npos) < 0 || arg_lit(b, "MGET") < 0)
            goto fail;
        for (uint32_t i = 0; i < e->npos; i++)
            if (arg_str(b, cm_redis_op_key(op, cm_entry_position(e, i))) < 0)
                goto fail;
        break;
    case CM_CMD_GETS:
        if (begin(b, 1 + (size_t)e->npos) < 0 || arg_lit(b, e->npos == 1 ? "GET" : "MGET") < 0)
            goto fail;
        for (uint32_t i = 0; i < e->npos; i++)
            if (arg_str(b, cm_redis_op_key(e->gets[i].op, e->gets[i].pos)) < 0)
                goto fail;
        break;
    case CM_CMD_SET: {
        PyObject *key = cm_redis_op_key(op, e->pos);                                  // borrowed
        PyObject *val = op->values ? PyList_GET_ITEM(op->values, e->pos) : op->value; // borrowed
        long long ttl = op->ttl_ms;
        if (ttl < 0) {
            if (begin(b, 3) < 0 || arg_lit(b, "SET") < 0 || arg_str(b, key) < 0 ||
                arg_str(b, val) < 0)
                goto fail;
        } else {
            int whole = ttl % 1000 == 0;
            if (begin(b, 4) < 0 || arg_lit(b, whole ? "SETEX" : "PSETEX") < 0 ||
                arg_str(b, key) < 0 || cm_resp_arg_ll(b, whole ? ttl / 1000 : ttl) < 0 ||
                arg_str(b, val) < 0)
                goto fail;
        }
        break;
    }
    case CM_CMD_DEL:
        if (begin(b, 2) < 0 || arg_lit(b, "DEL") < 0 || arg_str(b, cm_redis_op_key(op, e->pos)) < 0)
            goto fail;
        break;
    case CM_CMD_RAW: {
        Py_ssize_t n = PyTuple_GET_SIZE(op->keys);
        if (begin(b, (size_t)n) < 0)
            goto fail;
        for (Py_ssize_t i = 0; i < n; i++)
            if (arg_str(b, PyTuple_GET_ITEM(op->keys, i)) < 0)
                goto fail;
        break;
    }
    case CM_CMD_ASKING:
        if (begin(b, 1) < 0 || arg_lit(b, "ASKING") < 0)
            goto fail;
        break;
    default:
        PyErr_SetString(PyExc_SystemError, "redis: unknown request kind");
        goto fail;
    }
    return 0;
fail:
    cm_buf_rollback(b, mark);
    return -1;
}
