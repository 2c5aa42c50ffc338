/* The ready awaitable. am_send returns PYGEN_RETURN with the value, which is
 * what `await` uses in CPython >= 3.10; __next__ (StopIteration) is there for
 * callers that drive it as a plain iterator (asyncio.ensure_future). */
#include "loop/ready.h"

typedef struct {
    PyObject_HEAD
    PyObject *value; /* NULL once consumed */
} CmReadyObject;

PyObject *cm_ready_new(CmState *st, PyObject *value)
{
    CmReadyObject *r = (CmReadyObject *)st->ready_cache;
    if (r != NULL && Py_REFCNT(r) == 1) {
        /* only the module holds it: nobody can observe the reuse */
        Py_XSETREF(r->value, Py_NewRef(value));
        return Py_NewRef(r);
    }
    r = PyObject_GC_New(CmReadyObject, st->ReadyType);
    if (r == NULL)
        return NULL;
    r->value = Py_NewRef(value);
    PyObject_GC_Track(r);
    if (st->ready_cache == NULL)
        st->ready_cache = Py_NewRef(r);
    return (PyObject *)r;
}

static PySendResult ready_am_send(PyObject *self, PyObject *Py_UNUSED(arg), PyObject **result)
{
    CmReadyObject *r = (CmReadyObject *)self;
    if (r->value == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "cannot reuse already awaited cacheme result");
        *result = NULL;
        return PYGEN_ERROR;
    }
    *result = r->value; /* hand our reference over */
    r->value = NULL;
    return PYGEN_RETURN;
}

static PyObject *ready_iternext(PyObject *self)
{
    PyObject *value;
    if (ready_am_send(self, Py_None, &value) == PYGEN_ERROR)
        return NULL;
    /* StopIteration(value), wrapping tuples and exceptions correctly */
    PyObject *exc = PyObject_CallOneArg(PyExc_StopIteration, value);
    Py_DECREF(value);
    if (exc != NULL) {
        PyErr_SetObject(PyExc_StopIteration, exc);
        Py_DECREF(exc);
    }
    return NULL;
}

static PyObject *ready_send(PyObject *self, PyObject *Py_UNUSED(arg))
{
    return ready_iternext(self);
}

static PyObject *ready_throw(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    CmReadyObject *r = (CmReadyObject *)self;
    if (nargs < 1 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "throw expected 1 to 3 arguments");
        return NULL;
    }
    Py_CLEAR(r->value);
    PyObject *typ = args[0];
    if (PyExceptionInstance_Check(typ))
        PyErr_SetObject((PyObject *)Py_TYPE(typ), typ);
    else if (nargs >= 2 && args[1] != Py_None)
        PyErr_SetObject(typ, args[1]);
    else
        PyErr_SetNone(typ);
    return NULL;
}

static PyObject *ready_close(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    Py_CLEAR(((CmReadyObject *)self)->value);
    Py_RETURN_NONE;
}

static PyObject *ready_await(PyObject *self) { return Py_NewRef(self); }

static int ready_traverse(PyObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(((CmReadyObject *)self)->value);
    return 0;
}

static int ready_clear(PyObject *self)
{
    Py_CLEAR(((CmReadyObject *)self)->value);
    return 0;
}

static void ready_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    ready_clear(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyMethodDef ready_methods[] = {
    {"send", (PyCFunction)ready_send, METH_O, NULL},
    {"throw", (PyCFunction)(void (*)(void))ready_throw, METH_FASTCALL, NULL},
    {"close", ready_close, METH_NOARGS, NULL},
    {NULL, NULL},
};

static PyType_Slot ready_slots[] = {
    {Py_am_await, ready_await},
    {Py_am_send, ready_am_send},
    {Py_tp_iter, ready_await},
    {Py_tp_iternext, ready_iternext},
    {Py_tp_methods, ready_methods},
    {Py_tp_traverse, ready_traverse},
    {Py_tp_clear, ready_clear},
    {Py_tp_dealloc, ready_dealloc},
    {0, NULL},
};

static PyType_Spec ready_spec = {
    .name = "cacheme._core.Ready",
    .basicsize = sizeof(CmReadyObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = ready_slots,
};

int cm_ready_init(PyObject *mod, CmState *st)
{
    st->ReadyType = (PyTypeObject *)PyType_FromModuleAndSpec(mod, &ready_spec, NULL);
    return st->ReadyType ? 0 : -1;
}
