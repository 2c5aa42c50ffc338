/* asyncio glue. Kept small on purpose: the rest of the core reaches asyncio
 * only through these calls. */
#include "loop/loop.h"

#include "base/compat.h"
#include "base/exc.h"

PyObject *cm_loop_running(CmState *st) { return PyObject_CallNoArgs(st->get_running_loop); }

int cm_loop_is_running(CmState *st, PyObject *loop)
{
    PyObject *r = PyObject_VectorcallMethod(st->s_is_running, &loop,
                                            1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    int running = r == NULL ? -1 : PyObject_IsTrue(r);
    Py_XDECREF(r);
    return running;
}

int cm_loop_is_closed(PyObject *loop, int unknown)
{
    PyObject *saved = unknown >= 0 ? cm_exc_take() : NULL;
    PyObject *r = PyObject_CallMethod(loop, "is_closed", NULL);
    int closed = r == NULL ? -1 : PyObject_IsTrue(r);
    Py_XDECREF(r);
    if (closed < 0 && unknown >= 0) {
        PyErr_Clear();
        closed = unknown;
    }
    if (unknown >= 0)
        cm_exc_restore(saved);
    return closed;
}

int cm_loop_init(CmState *st)
{
    PyObject *mod = PyImport_ImportModule("asyncio.base_events");
    PyObject *cls = mod ? PyObject_GetAttrString(mod, "BaseEventLoop") : NULL;
    Py_XDECREF(mod);
    /* the function itself (from the class dict), to compare with what a
     * loop's type resolves create_future to */
    st->base_create_future =
        cls && PyType_Check(cls) ? cm_type_lookup((PyTypeObject *)cls, st->s_create_future) : NULL;
    Py_XINCREF(st->base_create_future);
    Py_XDECREF(cls);
    mod = PyImport_ImportModule("asyncio.futures");
    st->FutureType = mod ? PyObject_GetAttrString(mod, "Future") : NULL;
    Py_XDECREF(mod);
    st->kw_loop = Py_BuildValue("(s)", "loop");
    st->kw_context = Py_BuildValue("(s)", "context");
    if (!st->base_create_future || !st->FutureType || !st->kw_loop || !st->kw_context) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ImportError,
                            "cacheme: asyncio.BaseEventLoop.create_future not found");
        return -1;
    }
    return 0;
}

/* loop.create_future(). For a loop whose class keeps BaseEventLoop's
 * (asyncio's own loops), what that method does, Future(loop=loop), without
 * its Python frame; other loops (uvloop) are asked. */
PyObject *cm_loop_create_future(CmState *st, PyObject *loop)
{
    if (cm_type_lookup(Py_TYPE(loop), st->s_create_future) == st->base_create_future)
        return PyObject_Vectorcall(st->FutureType, &loop, 0, st->kw_loop);
    return PyObject_VectorcallMethod(st->s_create_future, &loop, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                     NULL);
}

PyObject *cm_loop_create_task(CmState *st, PyObject *loop, PyObject *coro)
{
    PyObject *args[2] = {loop, coro};
    return PyObject_VectorcallMethod(st->s_create_task, args, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                     NULL);
}

static int call_void(PyObject *name, PyObject *fut, PyObject *arg)
{
    PyObject *args[2] = {fut, arg};
    PyObject *r =
        PyObject_VectorcallMethod(name, args, (arg ? 2 : 1) | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

int cm_future_done(CmState *st, PyObject *fut)
{
    PyObject *r =
        PyObject_VectorcallMethod(st->s_done, &fut, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (r == NULL)
        return -1;
    int done = PyObject_IsTrue(r);
    Py_DECREF(r);
    return done;
}

PyObject *cm_future_result(CmState *st, PyObject *fut)
{
    return PyObject_VectorcallMethod(st->s_result, &fut, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

int cm_future_set_result(CmState *st, PyObject *fut, PyObject *value)
{
    return call_void(st->s_set_result, fut, value);
}

int cm_future_set_exception(CmState *st, PyObject *fut, PyObject *exc)
{
    return call_void(st->s_set_exception, fut, exc);
}

int cm_future_cancel(CmState *st, PyObject *fut) { return call_void(st->s_cancel, fut, NULL); }

int cm_future_add_done_callback(CmState *st, PyObject *fut, PyObject *cb)
{
    return call_void(st->s_add_done_callback, fut, cb);
}

/* The key of a thread's context in its thread state dict: the
 * module's own kw_context tuple (compared by identity first) */
PyObject *cm_loop_context_slow(CmState *st, void *tstate)
{
    PyObject *d = PyThreadState_GetDict(); // borrowed
    if (d == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "cacheme: no thread state dict");
        return NULL;
    }
    PyObject *ctx = PyDict_GetItemWithError(d, st->kw_context); // borrowed
    if (ctx == NULL) {
        if (PyErr_Occurred() || (ctx = PyContext_New()) == NULL)
            return NULL;
        int rc = PyDict_SetItem(d, st->kw_context, ctx);
        Py_DECREF(ctx); /* the thread's dict holds it */
        if (rc < 0)
            return NULL;
    }
    Py_XSETREF(st->empty_context, Py_NewRef(ctx));
    st->context_tstate = tstate;
    return ctx;
}

int cm_loop_after_fork_child(CmState *st)
{
    /* the forking thread's context may be "entered" in the copy: replace it */
    PyObject *d = PyThreadState_GetDict(); // borrowed
    Py_CLEAR(st->empty_context);
    st->context_tstate = NULL;
    if (d != NULL && PyDict_DelItem(d, st->kw_context) < 0) {
        if (!PyErr_ExceptionMatches(PyExc_KeyError))
            return -1;
        PyErr_Clear();
    }
    return 0;
}

int cm_future_add_done_callback_own_context(CmState *st, PyObject *fut, PyObject *cb)
{
    if (Py_TYPE(fut) != (PyTypeObject *)st->FutureType)
        return cm_future_add_done_callback(st, fut, cb);
    PyObject *ctx = cm_loop_context(st); // borrowed
    if (ctx == NULL)
        return -1;
    PyObject *args[3] = {fut, cb, ctx};
    PyObject *r = PyObject_VectorcallMethod(st->s_add_done_callback, args,
                                            2 | PY_VECTORCALL_ARGUMENTS_OFFSET, st->kw_context);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

static int call_soon_arg(CmState *st, PyObject *name, PyObject *loop, PyObject *cb, PyObject *arg,
                         PyObject *ctx)
{
    PyObject *args[4] = {loop, cb, arg, ctx};
    PyObject *kwnames = ctx != NULL && ctx != Py_None ? st->kw_context : NULL;
    PyObject *r =
        PyObject_VectorcallMethod(name, args, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, kwnames);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

int cm_loop_call_soon_arg(CmState *st, PyObject *loop, PyObject *cb, PyObject *arg, PyObject *ctx)
{
    return call_soon_arg(st, st->s_call_soon, loop, cb, arg, ctx);
}

int cm_loop_call_soon_threadsafe_arg(CmState *st, PyObject *loop, PyObject *cb, PyObject *arg,
                                     PyObject *ctx)
{
    return call_soon_arg(st, st->s_call_soon_threadsafe, loop, cb, arg, ctx);
}

void cm_future_consume(CmState *st, PyObject *fut)
{
    PyObject *typ, *val, *tb;
    PyErr_Fetch(&typ, &val, &tb);
    PyObject *c =
        PyObject_VectorcallMethod(st->s_cancelled, &fut, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (c != NULL && c == Py_False) {
        PyObject *name = PyUnicode_InternFromString("exception");
        if (name != NULL) {
            PyObject *e =
                PyObject_VectorcallMethod(name, &fut, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
            Py_XDECREF(e);
            Py_DECREF(name);
        }
    }
    Py_XDECREF(c);
    PyErr_Clear();
    PyErr_Restore(typ, val, tb);
}

PyObject *cm_await_iter(PyObject *o)
{
    if (PyCoro_CheckExact(o))
        return Py_NewRef(o);
    unaryfunc am_await = Py_TYPE(o)->tp_as_async ? Py_TYPE(o)->tp_as_async->am_await : NULL;
    if (am_await == NULL) {
        PyErr_Format(PyExc_TypeError, "object %.100s can't be used in 'await' expression",
                     Py_TYPE(o)->tp_name);
        return NULL;
    }
    PyObject *it = am_await(o);
    if (it != NULL && !PyIter_Check(it)) {
        PyErr_Format(PyExc_TypeError, "__await__() returned non-iterator of type '%.100s'",
                     Py_TYPE(it)->tp_name);
        Py_CLEAR(it);
    }
    return it;
}

int cm_is_cancelled_error(CmState *st, PyObject *exc)
{
    return PyObject_TypeCheck(exc, (PyTypeObject *)st->CancelledError);
}

void cm_log_warning(CmState *st, const char *fmt, PyObject *a, PyObject *b)
{
    PyObject *typ, *val, *tb;
    PyErr_Fetch(&typ, &val, &tb);
    if (st->logger != NULL) {
        PyObject *msg = PyUnicode_FromFormat(fmt, a, b);
        if (msg != NULL) {
            PyObject *args[2] = {st->logger, msg};
            PyObject *r = PyObject_VectorcallMethod(st->s_warning, args,
                                                    2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
            Py_XDECREF(r);
            Py_DECREF(msg);
        }
        PyErr_Clear();
    }
    PyErr_Restore(typ, val, tb);
}

/* fd watches: loop.add_reader(fd, cb) and friends. */
static int fd_call(PyObject *name, PyObject *loop, int fd, PyObject *cb)
{
    PyObject *pyfd = PyLong_FromLong(fd);
    if (pyfd == NULL)
        return -1;
    PyObject *args[3] = {loop, pyfd, cb};
    PyObject *r =
        PyObject_VectorcallMethod(name, args, (cb ? 3 : 2) | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(pyfd);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

int cm_loop_add_reader(CmState *st, PyObject *loop, int fd, PyObject *cb)
{
    return fd_call(st->s_add_reader, loop, fd, cb);
}

int cm_loop_remove_reader(CmState *st, PyObject *loop, int fd)
{
    return fd_call(st->s_remove_reader, loop, fd, NULL);
}

int cm_loop_add_writer(CmState *st, PyObject *loop, int fd, PyObject *cb)
{
    return fd_call(st->s_add_writer, loop, fd, cb);
}

int cm_loop_remove_writer(CmState *st, PyObject *loop, int fd)
{
    return fd_call(st->s_remove_writer, loop, fd, NULL);
}

PyObject *cm_loop_call_soon(CmState *st, PyObject *loop, PyObject *cb)
{
    PyObject *ctx = cm_loop_context(st); // borrowed
    if (ctx == NULL)
        return NULL;
    PyObject *args[3] = {loop, cb, ctx};
    return PyObject_VectorcallMethod(st->s_call_soon, args, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                     st->kw_context);
}

PyObject *cm_loop_call_later(CmState *st, PyObject *loop, double delay, PyObject *cb)
{
    PyObject *d = PyFloat_FromDouble(delay);
    if (d == NULL)
        return NULL;
    PyObject *args[3] = {loop, d, cb};
    PyObject *h =
        PyObject_VectorcallMethod(st->s_call_later, args, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(d);
    return h;
}

void cm_handle_cancel(CmState *st, PyObject *handle)
{
    PyObject *typ, *val, *tb;
    PyErr_Fetch(&typ, &val, &tb);
    PyObject *r =
        PyObject_VectorcallMethod(st->s_cancel, &handle, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    /* a handle the collector has cleared (its loop and owner garbage in one
     * cycle, collected in any order) has nothing left to cancel */
    if (r == NULL && PyErr_ExceptionMatches(PyExc_AttributeError))
        PyErr_Clear();
    else if (r == NULL)
        PyErr_WriteUnraisable(handle);
    Py_XDECREF(r);
    PyErr_Restore(typ, val, tb);
}

PySendResult cm_await_resume(CmState *st, PyObject *sub, PyObject *arg, PyObject *exc,
                             PyObject **res)
{
    if (exc == NULL)
        return PyIter_Send(sub, arg, res);
    PyObject *meth = PyObject_GetAttr(sub, st->s_throw);
    if (meth == NULL) {
        PyErr_Clear();
        cm_raise_exc(exc);
        *res = NULL;
        return PYGEN_ERROR;
    }
    PyObject *r = PyObject_CallOneArg(meth, exc);
    Py_DECREF(meth);
    if (r != NULL) {
        *res = r;
        return PYGEN_NEXT;
    }
    if (PyErr_ExceptionMatches(PyExc_StopIteration)) {
        PyObject *e = cm_exc_take();
        *res = PyObject_GetAttrString(e, "value");
        Py_DECREF(e);
        return *res ? PYGEN_RETURN : PYGEN_ERROR;
    }
    *res = NULL;
    return PYGEN_ERROR;
}

PyObject *cm_send_as_method(PySendResult r, PyObject *res)
{
    if (r == PYGEN_NEXT)
        return res;
    if (r == PYGEN_RETURN) {
        if (res == Py_None) {
            PyErr_SetNone(PyExc_StopIteration);
        } else {
            PyObject *e = PyObject_CallOneArg(PyExc_StopIteration, res);
            if (e != NULL) {
                PyErr_SetObject(PyExc_StopIteration, e);
                Py_DECREF(e);
            }
        }
        Py_DECREF(res);
    }
    return NULL;
}
