/* The GetAll awaitable: one object type for both roles of get_all (see
 * get_all.c), a coroutine as far as a Task is concerned (send, throw,
 * close, __await__). It drives one awaitable at a time the way `await`
 * does, delegating send and throw to it, and hands each outcome to its
 * role's state machine. */
#include "api/get_all_obj.h"

#include "base/exc.h"
#include "core/fresh.h"
#include "core/store.h"
#include "loop/loop.h"

/* logger.warning(fmt, name, exc_info=<the exception being raised>); the
 * exception is cleared. Never fails. */
void cm_ga_log_failed(CmState *st, const char *fmt, PyObject *name)
{
    PyObject *exc = cm_exc_take();
    if (st->logger != NULL) {
        PyObject *f = PyUnicode_FromString(fmt);
        PyObject *kw = Py_BuildValue("(s)", "exc_info");
        if (f != NULL && kw != NULL) {
            PyObject *args[4] = {st->logger, f, name, exc ? exc : Py_True};
            PyObject *r = PyObject_VectorcallMethod(st->s_warning, args,
                                                    3 | PY_VECTORCALL_ARGUMENTS_OFFSET, kw);
            Py_XDECREF(r);
        }
        Py_XDECREF(f);
        Py_XDECREF(kw);
        PyErr_Clear();
    }
    Py_XDECREF(exc);
}

int cm_ga_age_put(PyObject **ages, PyObject *key, const CmStoreAge *age)
{
    if (*ages == NULL && (*ages = PyDict_New()) == NULL)
        return -1;
    PyObject *b = PyBytes_FromStringAndSize((const char *)age, sizeof(*age));
    int rc = b != NULL ? PyDict_SetItem(*ages, key, b) : -1;
    Py_XDECREF(b);
    return rc;
}

/* ages[key] (see CmGetAllObject.ages) into *age: 1, 0 when absent, -1
 * with an exception. */
static int age_of(PyObject *ages, PyObject *key, CmStoreAge *age)
{
    PyObject *b = ages != NULL ? PyDict_GetItemWithError(ages, key) : NULL; // borrowed
    if (b == NULL)
        return PyErr_Occurred() ? -1 : 0;
    assert(PyBytes_CheckExact(b) && PyBytes_GET_SIZE(b) == (Py_ssize_t)sizeof(*age));
    memcpy(age, PyBytes_AS_STRING(b), sizeof(*age));
    return 1;
}

void cm_ga_fill_local(CmState *st, CmNodeConfigObject *cfg, CmCacheRef *r, PyObject *keys,
                      PyObject *values, PyObject *nodes, PyObject *ages)
{
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(keys); i++) {
        PyObject *key = PyList_GET_ITEM(keys, i);               // borrowed
        PyObject *value = PyDict_GetItemWithError(values, key); // borrowed
        int rc = -1;
        if (value == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetObject(PyExc_KeyError, key);
        } else if (r->kind == CM_CACHE_LOCAL) {
            Py_hash_t h = PyObject_Hash(key);
            CmStoreAge age;
            int aged = h == -1 ? -1 : age_of(ages, key, &age);
            rc = aged < 0 ? -1 : cm_fresh_put(st, cfg, r, key, h, value, aged ? &age : NULL);
        } else {
            PyObject *node = PyDict_GetItemWithError(nodes, key); // borrowed
            PyObject *aw = NULL;
            if (node != NULL) {
                PyObject *ttl = cm_cache_write_ttl(st, r);
                PyObject *args[5] = {r->storage, node, value, ttl, cfg->serializer};
                aw = ttl ? PyObject_VectorcallMethod(st->s_set, args,
                                                     5 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL)
                         : NULL;
                Py_XDECREF(ttl);
            } else if (!PyErr_Occurred()) {
                PyErr_SetObject(PyExc_KeyError, key);
            }
            if (aw != NULL && PyCoro_CheckExact(aw)) {
                PyObject *c = PyObject_CallMethodNoArgs(aw, st->s_close);
                Py_XDECREF(c);
                PyErr_Clear();
                Py_CLEAR(aw);
                PyErr_SetString(PyExc_RuntimeError,
                                "a local storage's set() must not need awaiting here");
            }
            rc = aw == NULL ? -1 : 0;
            Py_XDECREF(aw);
        }
        if (rc < 0) {
            counters(cfg, r)->errors++;
            counters(cfg, r)->set_errors++;
            cm_ga_log_failed(st, "cacheme: fill of storage %r failed", r->name);
        } else {
            counters(cfg, r)->sets++;
        }
    }
}

/* Drive aw (stolen) from now on. 1, or -1 with an exception. */
int cm_ga_start_sub(CmGetAllObject *o, PyObject *aw)
{
    if (aw == NULL)
        return -1;
    o->sub = cm_await_iter(aw);
    Py_DECREF(aw);
    return o->sub ? 1 : -1;
}

int cm_ga_list_append_pair(PyObject *list, Py_ssize_t i, PyObject *keys)
{
    PyObject *t = Py_BuildValue("(nO)", i, keys);
    int rc = t ? PyList_Append(list, t) : -1;
    Py_XDECREF(t);
    return rc;
}

/* ---- the awaitable ------------------------------------------------------- */

static PySendResult ga_step(CmGetAllObject *o, PyObject *arg, PyObject *exc, PyObject **out)
{
    *out = NULL;
    if (o->step == S_DONE) {
        if (exc != NULL)
            cm_raise_exc(exc);
        else
            PyErr_SetString(PyExc_RuntimeError, "cannot reuse already awaited get_all");
        return PYGEN_ERROR;
    }
    PyObject *res;
    PySendResult rs;
    if (o->sub == NULL) { /* the first step */
        if (exc != NULL)
            cm_raise_exc(exc);
        res = exc != NULL ? NULL : Py_NewRef(Py_None);
    } else {
        rs = cm_await_resume(o->st, o->sub, arg, exc, &res);
        if (rs == PYGEN_NEXT) {
            *out = res;
            return PYGEN_NEXT;
        }
    }
    for (;;) {
        if (o->sub != NULL) {
            PyObject *e = res == NULL ? cm_exc_take() : NULL;
            Py_CLEAR(o->sub);
            cm_exc_restore(e);
        }
        int r = o->role == R_CALLER ? cm_ga_caller_advance(o, res, out)
                                    : cm_ga_batch_advance(o, res, out);
        if (r == 0)
            return PYGEN_RETURN;
        if (r < 0)
            return PYGEN_ERROR;
        rs = PyIter_Send(o->sub, Py_None, &res);
        if (rs == PYGEN_NEXT) {
            *out = res;
            return PYGEN_NEXT;
        }
        if (rs == PYGEN_ERROR)
            res = NULL;
    }
}

static PySendResult ga_am_send(PyObject *self, PyObject *arg, PyObject **out)
{
    return ga_step((CmGetAllObject *)self, arg, NULL, out);
}

static PyObject *ga_iternext(PyObject *self)
{
    PyObject *res = NULL;
    PySendResult r = ga_am_send(self, Py_None, &res); /* before res is read */
    return cm_send_as_method(r, res);
}

static PyObject *ga_send(PyObject *self, PyObject *arg)
{
    PyObject *res = NULL;
    PySendResult r = ga_am_send(self, arg, &res);
    return cm_send_as_method(r, res);
}

static PyObject *ga_throw(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "throw expected 1 to 3 arguments");
        return NULL;
    }
    PyObject *exc;
    if (PyExceptionInstance_Check(args[0]))
        exc = Py_NewRef(args[0]);
    else if (PyExceptionClass_Check(args[0])) {
        PyObject *val = nargs > 1 ? args[1] : Py_None;
        exc = PyExceptionInstance_Check(val) ? Py_NewRef(val)
              : val == Py_None               ? PyObject_CallNoArgs(args[0])
                                             : PyObject_CallOneArg(args[0], val);
        if (exc == NULL)
            return NULL;
    } else {
        PyErr_SetString(PyExc_TypeError, "exceptions must derive from BaseException");
        return NULL;
    }
    PyObject *res = NULL;
    PySendResult r = ga_step((CmGetAllObject *)self, NULL, exc, &res);
    Py_DECREF(exc);
    return cm_send_as_method(r, res);
}

/* A batch that stops before its end (closed, or freed unfinished) gives
 * back the leases it holds and those of a lease awaitable it waits on, as
 * its own end does: else they stay held until they expire, and every
 * other process waits on those keys that long. A closed loop cannot send
 * the give-back: they expire by themselves then. Keeps the exception
 * being raised. */
static void ga_leases_end(CmGetAllObject *o)
{
    if (o->role != R_BATCH || (o->leases == NULL && o->lease_aw == NULL))
        return;
    PyObject *exc = cm_exc_take();
    cm_ga_lease_end(o);
    cm_exc_restore(exc);
}

/* Stop driving the awaitable in progress. A batch stopped before its end
 * leaves its flights to the handles' release (they fail as abandoned) and
 * gives back its leases once nothing loads under them any more. */
static PyObject *ga_close(PyObject *self, PyObject *Py_UNUSED(x))
{
    CmGetAllObject *o = (CmGetAllObject *)self;
    int rc = 0;
    o->step = S_DONE;
    if (o->sub != NULL) {
        PyObject *sub = o->sub;
        o->sub = NULL;
        PyObject *meth = PyObject_GetAttr(sub, o->st->s_close);
        PyObject *r = meth ? PyObject_CallNoArgs(meth) : NULL;
        Py_XDECREF(meth);
        Py_DECREF(sub);
        if (r == NULL) {
            if (PyErr_ExceptionMatches(PyExc_AttributeError))
                PyErr_Clear();
            else
                rc = -1;
        }
        Py_XDECREF(r);
    }
    ga_leases_end(o);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* Freed unfinished (its Task collected, e.g. pending when its loop
 * closed): the leases go back as on close(). */
static void ga_finalize(PyObject *self) { ga_leases_end((CmGetAllObject *)self); }

static PyObject *ga_await(PyObject *self) { return Py_NewRef(self); }

#define GA_FIELDS(X)                                                                               \
    X(sub)                                                                                         \
    X(cfg)                                                                                         \
    X(cls)                                                                                         \
    X(pending)                                                                                     \
    X(lead)                                                                                        \
    X(keys)                                                                                        \
    X(all)                                                                                         \
    X(results)                                                                                     \
    X(local_missed)                                                                                \
    X(wait_keys)                                                                                   \
    X(wait_aws)                                                                                    \
    X(nofill)                                                                                      \
    X(task)                                                                                        \
    X(bg)                                                                                          \
    X(todo)                                                                                        \
    X(found)                                                                                       \
    X(settled)                                                                                     \
    X(remote_missed)                                                                               \
    X(load_keys)                                                                                   \
    X(admitted)                                                                                    \
    X(ages)                                                                                        \
    X(due)                                                                                         \
    X(lease_keys)                                                                                  \
    X(leases)                                                                                      \
    X(lease_aw)

static int ga_traverse(PyObject *self, visitproc visit, void *arg)
{
    CmGetAllObject *o = (CmGetAllObject *)self;
    Py_VISIT(Py_TYPE(self));
    CM_STATE_VISIT(o->st);
#define GA_VISIT(f) Py_VISIT(o->f);
    GA_FIELDS(GA_VISIT)
#undef GA_VISIT
    return 0;
}

static int ga_clear(PyObject *self)
{
    CmGetAllObject *o = (CmGetAllObject *)self;
#define GA_CLEAR(f) Py_CLEAR(o->f);
    GA_FIELDS(GA_CLEAR)
#undef GA_CLEAR
    return 0;
}

static void ga_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    CmGetAllObject *o = (CmGetAllObject *)self;
    CmState *st = o->st;
    if (o->role == R_BATCH && (o->leases != NULL || o->lease_aw != NULL) &&
        PyObject_CallFinalizerFromDealloc(self) < 0)
        return; /* resurrected */
    PyObject_GC_UnTrack(self);
    ga_clear(self);
    tp->tp_free(self);
    Py_DECREF(tp);
    cm_state_release(st);
}

static PyMethodDef ga_methods[] = {
    {"send", ga_send, METH_O, NULL},
    {"throw", (PyCFunction)(void (*)(void))ga_throw, METH_FASTCALL, NULL},
    {"close", ga_close, METH_NOARGS, NULL},
    {NULL, NULL},
};

static PyType_Slot ga_slots[] = {
    {Py_am_await, ga_await},       {Py_am_send, ga_am_send},
    {Py_tp_iter, ga_await},        {Py_tp_iternext, ga_iternext},
    {Py_tp_methods, ga_methods},   {Py_tp_traverse, ga_traverse},
    {Py_tp_clear, ga_clear},       {Py_tp_dealloc, ga_dealloc},
    {Py_tp_finalize, ga_finalize}, {0, NULL},
};

static PyType_Spec ga_spec = {
    .name = "cacheme._core.GetAll",
    .basicsize = sizeof(CmGetAllObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = ga_slots,
};

CmGetAllObject *cm_ga_alloc(CmState *st, int role, int step)
{
    CmGetAllObject *o = PyObject_GC_New(CmGetAllObject, st->GetAllType);
    if (o == NULL)
        return NULL;
    memset((char *)o + sizeof(PyObject), 0, sizeof(CmGetAllObject) - sizeof(PyObject));
    o->st = cm_state_hold(st);
    o->role = role;
    o->step = step;
    PyObject_GC_Track(o);
    return o;
}

int cm_ga_type_init(PyObject *mod, CmState *st)
{
    st->GetAllType = (PyTypeObject *)PyType_FromModuleAndSpec(mod, &ga_spec, NULL);
    return st->GetAllType ? 0 : -1;
}
