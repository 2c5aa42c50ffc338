/* Memoized: what Memoize(NodeClass)(fn) returns. Calling it maps the
 * arguments to a node with the function given to .to_node and gets that
 * node, loading with fn(*args, **kwargs) on a miss. The arguments are copied
 * only on a miss; a hit goes straight to the ready awaitable. It binds as a
 * method (self is passed to both functions) and keeps update_wrapper's
 * attributes in its __dict__. */
#include "api/get.h"

#include <structmember.h>

typedef struct {
    PyObject_HEAD
    PyObject *fn;
    PyObject *node_cls;
    PyObject *to_node;
    PyObject *dict;
    PyObject *weakreflist;
    vectorcallfunc vectorcall;
} CmMemoizedObject;

static PyObject *memo_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf,
                                 PyObject *kwnames)
{
    CmMemoizedObject *m = (CmMemoizedObject *)self;
    CmState *st = cm_state_from_type(Py_TYPE(self));
    if (m->to_node == NULL) {
        PyErr_Format(PyExc_TypeError,
                     "%R: no node mapping; decorate one with @<function>.to_node first", m->fn);
        return NULL;
    }
    PyObject *node = PyObject_Vectorcall(m->to_node, args, nargsf, kwnames);
    if (node == NULL)
        return NULL;
    CmRequest req = {0};
    req.node = node;
    if (!PyObject_TypeCheck(node, (PyTypeObject *)m->node_cls))
        req.cls = (PyTypeObject *)m->node_cls; /* e.g. a DynamicNode for build_node() */
    req.memo_fn = m->fn;
    req.memo_args = args;
    req.memo_nargs = PyVectorcall_NARGS(nargsf);
    req.memo_kwnames = kwnames;
    PyObject *r = cm_get(st, &req);
    Py_DECREF(node);
    return r;
}

static PyObject *memo_new(PyTypeObject *tp, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"fn", "node", NULL};
    PyObject *fn, *node_cls;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO:Memoized", kwlist, &fn, &node_cls))
        return NULL;
    if (!PyCallable_Check(fn)) {
        PyErr_Format(PyExc_TypeError, "Memoize needs a callable, not %.100s", Py_TYPE(fn)->tp_name);
        return NULL;
    }
    if (!PyType_Check(node_cls)) {
        PyErr_Format(PyExc_TypeError, "Memoize needs a node class, not %.100s",
                     Py_TYPE(node_cls)->tp_name);
        return NULL;
    }
    CmMemoizedObject *m = (CmMemoizedObject *)tp->tp_alloc(tp, 0);
    if (m == NULL)
        return NULL;
    m->fn = Py_NewRef(fn);
    m->node_cls = Py_NewRef(node_cls);
    m->vectorcall = memo_vectorcall;
    return (PyObject *)m;
}

static PyObject *memo_to_node(PyObject *self, PyObject *fn)
{
    if (!PyCallable_Check(fn)) {
        PyErr_Format(PyExc_TypeError, "to_node needs a callable, not %.100s", Py_TYPE(fn)->tp_name);
        return NULL;
    }
    Py_XSETREF(((CmMemoizedObject *)self)->to_node, Py_NewRef(fn));
    return Py_NewRef(fn);
}

static PyObject *memo_descr_get(PyObject *self, PyObject *obj, PyObject *Py_UNUSED(type))
{
    if (obj == NULL || obj == Py_None)
        return Py_NewRef(self);
    return PyMethod_New(self, obj);
}

static int memo_traverse(PyObject *self, visitproc visit, void *arg)
{
    CmMemoizedObject *m = (CmMemoizedObject *)self;
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(m->fn);
    Py_VISIT(m->node_cls);
    Py_VISIT(m->to_node);
    Py_VISIT(m->dict);
    return 0;
}

static int memo_clear(PyObject *self)
{
    CmMemoizedObject *m = (CmMemoizedObject *)self;
    Py_CLEAR(m->fn);
    Py_CLEAR(m->node_cls);
    Py_CLEAR(m->to_node);
    Py_CLEAR(m->dict);
    return 0;
}

static void memo_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (((CmMemoizedObject *)self)->weakreflist != NULL)
        PyObject_ClearWeakRefs(self);
    memo_clear(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyObject *memo_repr(PyObject *self)
{
    return PyUnicode_FromFormat("<cacheme.Memoize of %R>", ((CmMemoizedObject *)self)->fn);
}

static PyMethodDef memo_methods[] = {
    {"to_node", memo_to_node, METH_O,
     "decorator: the function mapping this function's arguments to a node"},
    {NULL, NULL},
};

static PyMemberDef memo_members[] = {
    {"__dictoffset__", T_PYSSIZET, offsetof(CmMemoizedObject, dict), READONLY},
    {"__weaklistoffset__", T_PYSSIZET, offsetof(CmMemoizedObject, weakreflist), READONLY},
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(CmMemoizedObject, vectorcall), READONLY},
    {"node", T_OBJECT, offsetof(CmMemoizedObject, node_cls), READONLY, "the node class"},
    {NULL},
};

static PyGetSetDef memo_getset[] = {
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},
    {NULL},
};

static PyType_Slot memo_slots[] = {
    {Py_tp_new, memo_new},
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_descr_get, memo_descr_get},
    {Py_tp_methods, memo_methods},
    {Py_tp_members, memo_members},
    {Py_tp_getset, memo_getset},
    {Py_tp_repr, memo_repr},
    {Py_tp_traverse, memo_traverse},
    {Py_tp_clear, memo_clear},
    {Py_tp_dealloc, memo_dealloc},
    {0, NULL},
};

static PyType_Spec memo_spec = {
    .name = "cacheme._core.Memoized",
    .basicsize = sizeof(CmMemoizedObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_HAVE_VECTORCALL | Py_TPFLAGS_METHOD_DESCRIPTOR,
    .slots = memo_slots,
};

int cm_memoize_init(PyObject *mod, CmState *st)
{
    st->MemoizedType = (PyTypeObject *)PyType_FromModuleAndSpec(mod, &memo_spec, NULL);
    if (st->MemoizedType == NULL)
        return -1;
    if (PyModule_AddType(mod, st->MemoizedType) < 0)
        return -1;
    return cm_get_init(mod, st);
}
