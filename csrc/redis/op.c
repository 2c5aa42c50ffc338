/* Ops: one storage call each, with its future (or a flight's Get), keys,
 * values and the replies gathered from its entries; settled when its last
 * entry is answered or failed. */
#include "redis/internal.h"
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <structmember.h>

#include "flight/remote.h"
#include "ser/envelope.h"

CmRedisOp *cm_redis_op_new(CmRedisClientObject *client, int kind, PyObject *fut)
{
    CmRedisOp *op = calloc(1, sizeof(*op));
    if (op == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    op->kind = kind;
    op->refs = 1; /* the builder's */
    op->client = (CmRedisClientObject *)Py_NewRef(client);
    op->fut = Py_XNewRef(fut);
    op->ttl_ms = -1;
    return op;
}

void cm_redis_op_ref(CmRedisOp *op) { op->refs++; }

PyObject *cm_redis_op_key(CmRedisOp *op, uint32_t i)
{
    if (op->keys == NULL)
        return op->key;
    if (PyTuple_Check(op->keys) && op->key != NULL)
        return op->key; /* a raw command routed by a key of its own */
    if (PyTuple_Check(op->keys))
        return PyTuple_GET_SIZE(op->keys) > 1 ? PyTuple_GET_ITEM(op->keys, 1) : NULL;
    return PyList_GET_ITEM(op->keys, i);
}

void cm_redis_op_set_error(CmRedisOp *op, PyObject *exc)
{
    if (op->error == NULL)
        op->error = Py_NewRef(exc ? exc : op->client->st->redis.Error);
}

/* serializer.loads(raw)["value"]; new reference or NULL with an exception. */
static PyObject *decode_value(CmState *st, PyObject *ser, PyObject *raw)
{
    return cm_envelope_decode(st, CM_ENVELOPE_DICT, ser, raw, st->redis.Error, "redis");
}

/* [(node, value)] of the keys found and decodable, in order; an aged op's
 * are (node, value, updated_at: UTC ns, 0 unknown, load time: ns, 0 none). */
static PyObject *mget_pairs(CmState *st, CmRedisOp *op)
{
    Py_ssize_t n = PyList_GET_SIZE(op->result);
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *raw = PyList_GET_ITEM(op->result, i); // borrowed
        if (raw == Py_None)
            continue;
        int64_t updated = 0, load = 0;
        PyObject *v = op->aged ? cm_envelope_decode_aged(st, op->ser, raw, st->redis.Error, "redis",
                                                         &updated, &load)
                               : decode_value(st, op->ser, raw);
        if (v == NULL) {
            /* undecodable bytes are a miss, as in get() */
            PyObject *exc = cm_exc_take();
            cm_log_warning(st, "cacheme: redis value of %R cannot be decoded: %R",
                           PyList_GET_ITEM(op->keys, i), exc);
            Py_XDECREF(exc);
            continue;
        }
        PyObject *pair = op->aged ? Py_BuildValue("(OOLL)", PyList_GET_ITEM(op->nodes, i), v,
                                                  (long long)updated, (long long)load)
                                  : PyTuple_Pack(2, PyList_GET_ITEM(op->nodes, i), v);
        Py_DECREF(v);
        if (pair == NULL || PyList_Append(out, pair) < 0) {
            Py_XDECREF(pair);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(pair);
    }
    return out;
}

/* ---- a cluster get_all's failed pieces ---------------------------------------
 *
 * A get_all on a cluster is one request per slot, spread over the masters.
 * When one master is down, its requests fail with a connection error or a
 * timeout (or, for a slot no master serves for now, a redirect or
 * CLUSTERDOWN still answered past the retries: cluster.c);
 * the others' replies are still good, so the call keeps them: the failed
 * keys are misses, and each failed master is logged once per call (not once
 * per slot). Only when no request at all was answered does the call fail as
 * a whole, as it does on a single server, for its caller to log and count.
 * Other errors (a reply Redis refused, memory) fail the call as before.
 *
 * A partial outcome is a PartialResult: a list of the pairs found whose
 * `errors` says how many nodes failed, so that the request flow can count
 * them as errors of the storage (a plain list means none failed). */

typedef struct {
    PyListObject list;
    Py_ssize_t errors;
} CmPartialResultObject;

/* list's own slots, plus what a heap type owes its type object */
static int partial_traverse(PyObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    return PyList_Type.tp_traverse(self, visit, arg);
}

static int partial_clear(PyObject *self) { return PyList_Type.tp_clear(self); }

static void partial_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyList_Type.tp_dealloc(self);
    Py_DECREF(tp);
}

static PyMemberDef partial_members[] = {
    {"errors", T_PYSSIZET, offsetof(CmPartialResultObject, errors), READONLY,
     "nodes whose requests failed (their keys are missing)"},
    {NULL},
};

static PyType_Slot partial_slots[] = {
    {Py_tp_doc, "The [(node, value)] of a get_all some of whose requests failed."},
    {Py_tp_traverse, partial_traverse},
    {Py_tp_clear, partial_clear},
    {Py_tp_dealloc, partial_dealloc},
    {Py_tp_members, partial_members},
    {0, NULL},
};

PyType_Spec cm_redis_partial_spec = {
    .name = "cacheme._core.PartialResult",
    .basicsize = sizeof(CmPartialResultObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = partial_slots,
};

static int is_piece_failure(const CmRedisEntry *e, PyObject *exc)
{
    CmRedisOp *op = e->op;
    CmState *st = op->client->st;
    if (op->kind != OP_MGET || op->client->cluster == NULL || exc == NULL)
        return 0;
    if (PyObject_TypeCheck(exc, (PyTypeObject *)st->redis.ConnectionError) ||
        PyObject_TypeCheck(exc, (PyTypeObject *)st->redis.TimeoutError))
        return 1;
    if (!PyObject_TypeCheck(exc, (PyTypeObject *)st->redis.ResponseError))
        return 0;
    PyObject *msg = PyObject_Str(exc);
    const char *s = msg != NULL ? PyUnicode_AsUTF8(msg) : NULL;
    int down = s != NULL && (!strncmp(s, "CLUSTERDOWN ", 12) || !strncmp(s, "MOVED ", 6) ||
                             !strncmp(s, "ASK ", 4) || !strncmp(s, "TRYAGAIN ", 9));
    if (s == NULL)
        PyErr_Clear();
    Py_XDECREF(msg);
    return down;
}

/* Keep exc (borrowed) as the failure of the entry's node; -1 if it could
 * not be kept (no memory: the call then fails as a whole). */
static int piece_failed(CmRedisEntry *e, PyObject *exc)
{
    CmRedisOp *op = e->op;
    const char *label = cm_cluster_node_label(op->client, e->node);
    PyObject *key = label != NULL ? PyUnicode_FromString(label) : PyObject_Str(exc);
    int rc = -1;
    if (key == NULL) {
        PyErr_Clear();
        return -1;
    }
    if (op->failed == NULL && (op->failed = PyDict_New()) == NULL)
        goto done;
    PyObject *kept = PyDict_SetDefault(op->failed, key, exc); // borrowed
    rc = kept != NULL ? 0 : -1;
done:
    Py_DECREF(key);
    if (rc < 0)
        PyErr_Clear();
    return rc;
}

/* The outcome of a cluster get_all some of whose requests failed: the pairs
 * found, each failed node logged; or, with none answered, NULL with the
 * first failure raised. */
static PyObject *mget_partial(CmState *st, CmRedisOp *op)
{
    Py_ssize_t pos = 0;
    PyObject *label, *exc, *first = NULL;
    while (PyDict_Next(op->failed, &pos, &label, &exc)) {
        if (op->answered == 0 && first == NULL)
            first = exc; /* raised: its caller logs it */
        else
            cm_log_warning(st,
                           "cacheme: redis cluster node %U failed in get_all, its keys count as "
                           "misses: %R",
                           label, exc);
    }
    if (first != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(first), first);
        return NULL;
    }
    PyObject *pairs = mget_pairs(st, op);
    PyObject *out = pairs ? PyObject_CallOneArg(st->redis.PartialResultType, pairs) : NULL;
    Py_XDECREF(pairs);
    if (out != NULL)
        ((CmPartialResultObject *)out)->errors = PyDict_GET_SIZE(op->failed);
    return out;
}

/* ---- waiters woken straight ------------------------------------------------
 *
 * The leader of a flight waits for a storage call through a FlightProxy,
 * which would add itself as a done-callback of the call's future: when the
 * reply comes, set_result schedules it with loop.call_soon (a Handle, its
 * Python frames) and the proxy then wakes the Task. For the future a Redis
 * call has just returned, the proxy is instead given to the op
 * (cm_redis_attach_waiter): the op sets its future as before and hands the
 * proxy to cm_remote_wake_waiter, whose one callback per batch of replies
 * wakes every proxy handed over, in the order their ops finished. */

int cm_redis_attach_waiter(CmState *st, PyObject *fut, PyObject *waiter, PyObject *loop)
{
    CmRedisOp *op = st->redis.last_op; // borrowed: cleared when op finishes
    if (op == NULL || op->fut != fut || op->waiter != NULL)
        return 0;
    op->waiter = Py_NewRef(waiter);
    op->waiter_loop = Py_NewRef(loop);
    st->redis.last_op = NULL;
    return 1;
}

/* The value of a get made for a flight's call whose node has freshness
 * options, its age told to the call. */
static PyObject *decode_aged(CmState *st, CmRedisOp *op)
{
    int64_t updated, load;
    PyObject *v =
        cm_envelope_decode_aged(st, op->ser, op->result, st->redis.Error, "redis", &updated, &load);
    if (v != NULL)
        cm_remote_call_age(op->get, updated, load);
    return v;
}

static void op_finish(CmRedisOp *op)
{
    CmState *st = op->client->st;
    int64_t updated;
    PyObject *saved = cm_exc_take();
    if (st->redis.last_op == op)
        st->redis.last_op = NULL;
    PyObject *res = NULL;
    PyObject *err = Py_XNewRef(op->error);

    if (err == NULL) {
        switch (op->kind) {
        case OP_GET:
            if (op->result == NULL || op->result == Py_None)
                res = Py_NewRef(st->sentinel);
            else if (op->get != NULL && cm_remote_call_fresh(op->get, &updated) != 0)
                res = decode_aged(st, op);
            else
                res = decode_value(st, op->ser, op->result);
            break;
        case OP_MGET:
            res = op->failed != NULL ? mget_partial(st, op) : mget_pairs(st, op);
            break;
        case OP_RAW:
            res = Py_NewRef(op->result ? op->result : Py_None);
            break;
        default:
            res = Py_NewRef(Py_None);
            break;
        }
        if (res == NULL)
            err = cm_exc_take();
    }
    if (op->done != NULL && op->done(op->client, err ? NULL : op->result, err) < 0) {
        Py_XDECREF(err);
        err = cm_exc_take();
    }
    if (op->fut != NULL) {
        int rc = err ? cm_future_set_exception(st, op->fut, err)
                     : cm_future_set_result(st, op->fut, res);
        if (rc < 0)
            PyErr_Clear(); /* the caller cancelled it */
    }
    if (op->waiter != NULL) {
        cm_remote_wake_waiter(st, op->waiter, op->fut, op->waiter_loop);
        op->waiter = op->waiter_loop = NULL;
    }
    if (op->get != NULL) {
        PyObject *g = op->get;
        op->get = NULL;
        cm_remote_done(st, g, res, err);
    }
    Py_XDECREF(res);
    Py_XDECREF(err);
    Py_DECREF(op->client);
    Py_XDECREF(op->fut);
    Py_XDECREF(op->ser);
    Py_XDECREF(op->key);
    Py_XDECREF(op->keys);
    Py_XDECREF(op->nodes);
    Py_XDECREF(op->value);
    Py_XDECREF(op->values);
    Py_XDECREF(op->result);
    Py_XDECREF(op->error);
    Py_XDECREF(op->failed);
    free(op);
    cm_exc_restore(saved);
}

static int op_traverse(const CmRedisOp *op, visitproc visit, void *arg)
{
    if (op == NULL || op->refs != 1)
        return 0;
    Py_VISIT(op->client);
    Py_VISIT(op->fut);
    Py_VISIT(op->ser);
    Py_VISIT(op->key);
    Py_VISIT(op->keys);
    Py_VISIT(op->nodes);
    Py_VISIT(op->value);
    Py_VISIT(op->values);
    Py_VISIT(op->result);
    Py_VISIT(op->error);
    Py_VISIT(op->failed);
    Py_VISIT(op->waiter);
    Py_VISIT(op->waiter_loop);
    Py_VISIT(op->get);
    return 0;
}

int cm_redis_entry_traverse(const CmRedisEntry *e, visitproc visit, void *arg)
{
    int rc = op_traverse(e->op, visit, arg);
    for (uint32_t i = 0; rc == 0 && e->gets != NULL && i < e->npos; i++)
        rc = op_traverse(e->gets[i].op, visit, arg);
    return rc;
}

void cm_redis_op_unref(CmRedisOp *op)
{
    if (--op->refs == 0)
        op_finish(op);
}

/* Let an answered entry go. */
void cm_redis_entry_release(CmRedisEntry *e)
{
    CmRedisOp *op = e->op;
    CmRedisGetRef *gets = e->gets;
    uint32_t n = e->npos;
    free(e->positions);
    e->positions = NULL;
    e->op = NULL;
    e->gets = NULL;
    if (gets != NULL) {
        for (uint32_t i = 0; i < n; i++)
            cm_redis_op_unref(gets[i].op);
        free(gets);
    }
    if (op != NULL)
        cm_redis_op_unref(op);
}

/* Fail the entry's op with exc (borrowed); a cluster get_all's failed piece
 * only leaves its keys misses. */
static void op_fail_entry(CmRedisEntry *e, PyObject *exc)
{
    if (!(is_piece_failure(e, exc) && piece_failed(e, exc) == 0))
        cm_redis_op_set_error(e->op, exc);
}

/* Fail the entry's op(s) with exc (borrowed) and let the entry go. */
void cm_redis_entry_fail_exc(CmRedisEntry *e, PyObject *exc)
{
    if (e->op != NULL)
        op_fail_entry(e, exc);
    for (uint32_t i = 0; e->gets != NULL && i < e->npos; i++)
        cm_redis_op_set_error(e->gets[i].op, exc);
    cm_redis_entry_release(e);
}

void cm_redis_entry_fail(CmState *st, CmRedisEntry *e, PyObject *tp, PyObject *msg)
{
    PyObject *saved = cm_exc_take();
    int wanted = (e->op != NULL && e->op->error == NULL) || e->gets != NULL;
    PyObject *exc = wanted ? PyObject_CallOneArg(tp, msg ? msg : Py_None) : NULL;
    if (exc == NULL)
        PyErr_Clear();
    cm_redis_entry_fail_exc(e, exc ? exc : st->redis.Error);
    Py_XDECREF(exc);
    cm_exc_restore(saved);
}

/* Fail the entry with the exception being raised (cleared). */
void cm_redis_entry_fail_current(CmRedisEntry *e)
{
    PyObject *exc = cm_exc_take();
    cm_redis_entry_fail_exc(e, exc);
    Py_XDECREF(exc);
}

/* One reply for the entry at the head of the ring (reply stolen). */
void cm_redis_entry_reply(CmRedisConnObject *c, CmRedisEntry *e, PyObject *reply)
{
    CmState *st = c->net.st;
    CmRedisOp *op = e->op;
    int is_err = PyObject_TypeCheck(reply, (PyTypeObject *)st->redis.ResponseError);
    if (e->cmd == CM_CMD_GETS) {
        int whole = e->npos == 1 || (PyList_Check(reply) && PyList_GET_SIZE(reply) == e->npos);
        PyObject *exc = NULL;
        if (!is_err && !whole &&
            (exc = PyObject_CallFunction(st->redis.Error, "s", "unexpected MGET reply")) == NULL)
            exc = cm_exc_take();
        for (uint32_t i = 0; i < e->npos; i++) {
            CmRedisOp *m = e->gets[i].op;
            PyObject *r = e->npos == 1 ? reply : whole ? PyList_GET_ITEM(reply, i) : NULL;
            if (is_err || !whole)
                cm_redis_op_set_error(m, is_err ? reply : exc);
            else if (m->kind == OP_MGET) /* a key of a get_all: its slot */
                PyList_SetItem(m->result, e->gets[i].pos, Py_NewRef(r));
            else
                Py_XSETREF(m->result, Py_NewRef(r));
        }
        Py_XDECREF(exc);
        Py_DECREF(reply);
        cm_redis_entry_release(e);
        return;
    }
    if (op == NULL) {
        if (is_err && e->cmd == CM_CMD_HELLO)
            cm_redis_conn_close_fmt(c, st->redis.ConnectionError, 1, "redis %s: %S",
                                    cm_redis_conn_label(c), reply);
        Py_DECREF(reply);
        free(e->positions);
        return;
    }
    if (is_err && op->client->cluster != NULL && cm_cluster_redirect(op->client, e, reply)) {
        Py_DECREF(reply);
        return;
    }
    if (is_err) {
        op_fail_entry(e, reply);
    } else if (e->cmd == CM_CMD_GET && op->kind == OP_MGET) {
        /* one key of a get_all followed on its own (cluster.c) */
        PyList_SetItem(op->result, e->pos, Py_NewRef(reply));
        op->answered++;
    } else if (e->cmd == CM_CMD_GET || e->cmd == CM_CMD_RAW) {
        Py_XSETREF(op->result, Py_NewRef(reply));
    } else if (e->cmd == CM_CMD_MGET) {
        if (PyList_Check(reply) && PyList_GET_SIZE(reply) == (Py_ssize_t)e->npos) {
            op->answered++;
            for (uint32_t i = 0; i < e->npos; i++)
                PyList_SetItem(op->result, cm_entry_position(e, i),
                               Py_NewRef(PyList_GET_ITEM(reply, i)));
        } else {
            PyObject *exc = PyObject_CallFunction(st->redis.Error, "s", "unexpected MGET reply");
            if (exc == NULL)
                exc = cm_exc_take();
            cm_redis_op_set_error(op, exc);
            Py_XDECREF(exc);
        }
    }
    Py_DECREF(reply);
    cm_redis_entry_release(e);
}
