/* pickle for cached bytes: an allowlist by default, full pickle only when signed.
 *
 * Cached bytes are data: whoever can write the cache must not be able to run
 * code in every reader. Pickle names callables (GLOBAL / STACK_GLOBAL, then
 * REDUCE, NEWOBJ, BUILD call them), and every global goes through
 * Unpickler.find_class (EXT1/2/4 included). So find_class is a C override on
 * a subclass of _pickle.Unpickler that
 *   - looks the name up in sys.modules only (cm_ser_lookup_global): never an
 *     import, never a module __getattr__;
 *   - returns it only if it is a class object_decoder would also construct
 *     (cm_ser_value_class: datetime, date, time, timedelta, Decimal, UUID,
 *     Enums, dataclasses, pydantic models, ...), one of the few builtin
 *     containers pickle spells as a global (set, frozenset, bytearray,
 *     complex, datetime.timezone), or an object the user named in
 *     PickleSerializer(allowed=[...]).
 * Functions (builtins.eval, os.system, functools.partial, copyreg
 * helpers...) are never returned, so the opcode machine, still CPython's C
 * unpickler, can only call those classes. persistent ids have no loader.
 *
 * PickleSerializer(secret=...) is full pickle for those who need it: dumps
 * writes "CMH1" + HMAC-SHA256(secret, pickle) + pickle, and loads checks the
 * tag with hmac.compare_digest before pickle.loads ever sees the bytes;
 * unsigned or wrongly signed bytes are refused. Without a secret the bytes
 * are 0.3.0's (base64 of pickle.dumps), so both versions share a cache. */
#include "ser/serializer.h"

#define CM_PICKLE_SIG_MAGIC "CMH1"
#define CM_PICKLE_SIG_MAGIC_LEN 4
#define CM_PICKLE_SIG_LEN 32 /* SHA-256 */

/* ---- the restricted unpickler ------------------------------------------- */

/* What one load keeps at st->ser.unpickler_off inside the unpickler (after
 * _pickle's private layout), set only for the duration of that load by
 * cm_ser_pickle_loads:
 *   ser     the serializer whose allowlist applies (borrowed: loads holds it);
 *   locked  the classes made immutable for the load (a new reference, or
 *           NULL): BUILD with a (state, slotstate) pair does setattr on the
 *           object below it, and the bytes could put an allowed class there
 *           (GLOBAL then BUILD) and rewrite its attributes for the whole
 *           process. An immutable type refuses that setattr; the flag is
 *           taken off again when the load ends. */
typedef struct {
    CmPickleSerObject *ser;
    PyObject *locked;
} CmUnpicklerExtra;

static CmUnpicklerExtra *unpickler_extra(CmState *st, PyObject *self)
{
    return (CmUnpicklerExtra *)((char *)self + st->ser.unpickler_off);
}

/* Make a (heap, mutable) class immutable until the load ends: 0, or -1. */
static int lock_class(CmUnpicklerExtra *x, PyObject *obj)
{
    PyTypeObject *tp = (PyTypeObject *)obj;
    if (!PyType_Check(obj) || !PyType_HasFeature(tp, Py_TPFLAGS_HEAPTYPE) ||
        PyType_HasFeature(tp, Py_TPFLAGS_IMMUTABLETYPE))
        return 0; /* static types and already locked ones refuse setattr anyway */
    if (x->locked == NULL && (x->locked = PyList_New(0)) == NULL)
        return -1;
    if (PyList_Append(x->locked, obj) < 0)
        return -1;
    tp->tp_flags |= Py_TPFLAGS_IMMUTABLETYPE;
    return 0;
}

static void unlock_classes(CmUnpicklerExtra *x)
{
    PyObject *locked = x->locked;
    x->locked = NULL;
    if (locked == NULL)
        return;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(locked); i++) {
        PyTypeObject *tp = (PyTypeObject *)PyList_GET_ITEM(locked, i); // borrowed
        tp->tp_flags &= ~Py_TPFLAGS_IMMUTABLETYPE;
    }
    Py_DECREF(locked);
}

static int pickle_allowed(CmState *st, CmPickleSerObject *ser, PyObject *obj)
{
    int rc;
    if (obj == (PyObject *)&PySet_Type || obj == (PyObject *)&PyFrozenSet_Type ||
        obj == (PyObject *)&PyByteArray_Type || obj == (PyObject *)&PyComplex_Type ||
        obj == (PyObject *)Py_TYPE(st->ser.utc))
        return 1;
    if (ser != NULL && ser->allowed != NULL) {
        rc = PySet_Contains(ser->allowed, obj);
        if (rc != 0)
            return rc; /* 1, or -1: an unhashable global is an error */
    }
    return cm_ser_value_class(st, obj);
}

static PyObject *SafeUnpickler_find_class(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    CmState *st = PyType_GetModuleState(Py_TYPE(self));
    PyObject *obj;
    int ok;

    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "find_class(module, name)");
        return NULL;
    }
    /* protocols 0-2 spell builtins the Python 2 way (_pickle's own
     * find_class maps it under fix_imports; ours replaces that one) */
    if (PyUnicode_Check(args[0]) && PyUnicode_CompareWithASCIIString(args[0], "__builtin__") == 0)
        obj = cm_ser_lookup_global(st->ser.s_builtins, args[1]);
    else
        obj = cm_ser_lookup_global(args[0], args[1]);
    if (obj == NULL)
        return NULL;
    ok = pickle_allowed(st, unpickler_extra(st, self)->ser, obj);
    if (ok > 0 && lock_class(unpickler_extra(st, self), obj) < 0)
        ok = -1;
    if (ok > 0)
        return obj;
    Py_DECREF(obj);
    if (ok == 0)
        PyErr_Format(PyExc_ValueError,
                     "refusing the global %S.%S: not a value type cacheme constructs (name it in "
                     "PickleSerializer(allowed=[...]), or sign payloads with secret=...)",
                     args[0], args[1]);
    return NULL;
}

static void SafeUnpickler_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyTypeObject *base = tp->tp_base; // borrowed
    int base_is_heap = PyType_HasFeature(base, Py_TPFLAGS_HEAPTYPE);
    base->tp_dealloc(self);
    /* a static base (3.11's _pickle) does not release our heap type */
    if (!base_is_heap)
        Py_DECREF(tp);
}

static PyMethodDef SafeUnpickler_methods[] = {
    {"find_class", (PyCFunction)(void (*)(void))SafeUnpickler_find_class, METH_FASTCALL,
     "find_class(module, name): an allowed class from an already loaded module, never an import"},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot SafeUnpickler_slots[] = {
    {Py_tp_dealloc, SafeUnpickler_dealloc},
    {Py_tp_methods, SafeUnpickler_methods},
    {0, NULL},
};

static PyType_Spec SafeUnpickler_spec = {
    .name = "cacheme._core._SafeUnpickler",
    .basicsize = 0, /* set at init: the base's size plus our pointer */
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = SafeUnpickler_slots,
};

/* ---- loads / dumps -------------------------------------------------------- */

static PyObject *pickle_tag(CmPickleSerObject *ser, const char *data, Py_ssize_t len)
{
    PyObject *msg = PyMemoryView_FromMemory((char *)data, len, PyBUF_READ), *tag;
    if (msg == NULL)
        return NULL;
    tag = PyObject_CallFunction(ser->digest, "OOs", ser->secret, msg, "sha256");
    Py_DECREF(msg);
    return tag;
}

/* signed payload: verify, then full pickle */
static PyObject *pickle_loads_signed(CmState *st, CmPickleSerObject *ser, PyObject *raw)
{
    const char *p = PyBytes_AS_STRING(raw);
    Py_ssize_t n = PyBytes_GET_SIZE(raw), head = CM_PICKLE_SIG_MAGIC_LEN + CM_PICKLE_SIG_LEN;
    PyObject *tag = NULL, *given = NULL, *same = NULL, *body = NULL, *res = NULL;
    int ok;

    if (n < head || memcmp(p, CM_PICKLE_SIG_MAGIC, CM_PICKLE_SIG_MAGIC_LEN) != 0) {
        PyErr_SetString(PyExc_ValueError, "unsigned payload refused (this PickleSerializer has a "
                                          "secret and loads only payloads signed with it)");
        return NULL;
    }
    if ((tag = pickle_tag(ser, p + head, n - head)) == NULL ||
        (given = PyBytes_FromStringAndSize(p + CM_PICKLE_SIG_MAGIC_LEN, CM_PICKLE_SIG_LEN)) ==
            NULL ||
        (same = PyObject_CallFunctionObjArgs(ser->compare, tag, given, NULL)) == NULL)
        goto done;
    if ((ok = PyObject_IsTrue(same)) < 0)
        goto done;
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "payload signature does not match the secret");
        goto done;
    }
    if ((body = PyMemoryView_FromMemory((char *)p + head, n - head, PyBUF_READ)) == NULL)
        goto done;
    res = PyObject_CallOneArg(st->ser.pickle_loads, body);
done:
    Py_XDECREF(tag);
    Py_XDECREF(given);
    Py_XDECREF(same);
    Py_XDECREF(body);
    return res;
}

PyObject *cm_ser_pickle_loads(CmState *st, PyObject *self, PyObject *raw)
{
    CmPickleSerObject *ser = (CmPickleSerObject *)self;
    PyObject *file, *unpickler = NULL, *res = NULL;

    if (ser->secret != NULL)
        return pickle_loads_signed(st, ser, raw);
    if ((file = PyObject_CallOneArg(st->ser.BytesIO, raw)) == NULL)
        return NULL;
    unpickler = PyObject_CallOneArg(st->ser.SafeUnpicklerType, file);
    if (unpickler != NULL) {
        CmUnpicklerExtra *x = unpickler_extra(st, unpickler);
        x->ser = ser;
        x->locked = NULL;
        res = PyObject_CallMethod(unpickler, "load", NULL);
        x->ser = NULL;
        unlock_classes(x);
    }
    Py_XDECREF(unpickler);
    Py_DECREF(file);
    return res;
}

PyObject *cm_ser_pickle_dumps(CmState *st, PyObject *self, PyObject *obj)
{
    CmPickleSerObject *ser = (CmPickleSerObject *)self;
    PyObject *raw = PyObject_CallOneArg(st->ser.pickle_dumps, obj), *tag = NULL, *res = NULL;
    char *out;

    if (raw == NULL || ser->secret == NULL)
        return raw;
    if ((tag = pickle_tag(ser, PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw))) == NULL)
        goto done;
    if (!PyBytes_Check(tag) || PyBytes_GET_SIZE(tag) != CM_PICKLE_SIG_LEN) {
        PyErr_SetString(PyExc_SystemError, "hmac.digest did not return 32 bytes");
        goto done;
    }
    res = PyBytes_FromStringAndSize(NULL, CM_PICKLE_SIG_MAGIC_LEN + CM_PICKLE_SIG_LEN +
                                              PyBytes_GET_SIZE(raw));
    if (res == NULL)
        goto done;
    out = PyBytes_AS_STRING(res);
    memcpy(out, CM_PICKLE_SIG_MAGIC, CM_PICKLE_SIG_MAGIC_LEN);
    memcpy(out + CM_PICKLE_SIG_MAGIC_LEN, PyBytes_AS_STRING(tag), CM_PICKLE_SIG_LEN);
    memcpy(out + CM_PICKLE_SIG_MAGIC_LEN + CM_PICKLE_SIG_LEN, PyBytes_AS_STRING(raw),
           (size_t)PyBytes_GET_SIZE(raw));
done:
    Py_DECREF(raw);
    Py_XDECREF(tag);
    return res;
}

/* ---- PickleSerializer(*, allowed=(), secret=None) ------------------------ */

int cm_pickle_ser_init(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"allowed", "secret", NULL};
    CmPickleSerObject *ser = (CmPickleSerObject *)self;
    PyObject *allowed = NULL, *secret = NULL, *set = NULL, *key = NULL, *hmac = NULL;
    PyObject *digest = NULL, *compare = NULL;
    int rc = -1;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|$OO:PickleSerializer", kwlist, &allowed,
                                     &secret))
        return -1;
    if (allowed == Py_None)
        allowed = NULL;
    if (secret == Py_None)
        secret = NULL;
    if (allowed != NULL && (set = PyFrozenSet_New(allowed)) == NULL) {
        if (PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Clear();
            PyErr_SetString(PyExc_TypeError,
                            "PickleSerializer: allowed must be an iterable of classes");
        }
        goto done;
    }
    if (set != NULL && PySet_GET_SIZE(set) == 0)
        Py_CLEAR(set);
    if (secret != NULL) {
        if (set != NULL) {
            PyErr_SetString(PyExc_ValueError,
                            "PickleSerializer: secret= loads full (signed) pickle; allowed= "
                            "applies only without a secret");
            goto done;
        }
        if (PyUnicode_Check(secret))
            key = PyUnicode_AsUTF8String(secret);
        else if (PyObject_CheckBuffer(secret))
            key = PyBytes_FromObject(secret);
        else
            PyErr_SetString(PyExc_TypeError, "PickleSerializer: secret must be bytes or str");
        if (key == NULL)
            goto done;
        if (PyBytes_GET_SIZE(key) == 0) {
            PyErr_SetString(PyExc_ValueError, "PickleSerializer: secret must not be empty");
            goto done;
        }
        if ((hmac = PyImport_ImportModule("hmac")) == NULL ||
            (digest = PyObject_GetAttrString(hmac, "digest")) == NULL ||
            (compare = PyObject_GetAttrString(hmac, "compare_digest")) == NULL)
            goto done;
    }
    Py_XSETREF(ser->allowed, set);
    Py_XSETREF(ser->secret, key);
    Py_XSETREF(ser->digest, digest);
    Py_XSETREF(ser->compare, compare);
    set = key = digest = compare = NULL;
    rc = 0;
done:
    Py_XDECREF(set);
    Py_XDECREF(key);
    Py_XDECREF(hmac);
    Py_XDECREF(digest);
    Py_XDECREF(compare);
    return rc;
}

int cm_pickle_ser_traverse(PyObject *self, visitproc visit, void *arg)
{
    CmPickleSerObject *ser = (CmPickleSerObject *)self;
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(ser->allowed);
    Py_VISIT(ser->digest);
    Py_VISIT(ser->compare);
    return 0;
}

int cm_pickle_ser_clear(PyObject *self)
{
    CmPickleSerObject *ser = (CmPickleSerObject *)self;
    Py_CLEAR(ser->allowed);
    Py_CLEAR(ser->secret);
    Py_CLEAR(ser->digest);
    Py_CLEAR(ser->compare);
    return 0;
}

void cm_pickle_ser_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    cm_pickle_ser_clear(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

/* ---- init ------------------------------------------------------------------ */

int cm_ser_pickle_init(PyObject *mod, CmState *st)
{
    PyObject *pickle = NULL, *io = NULL, *base = NULL;
    Py_ssize_t off;
    int rc = -1;

    if ((pickle = PyImport_ImportModule("_pickle")) == NULL ||
        (io = PyImport_ImportModule("io")) == NULL)
        goto done;
    if ((base = PyObject_GetAttrString(pickle, "Unpickler")) == NULL ||
        (st->ser.pickle_loads = PyObject_GetAttrString(pickle, "loads")) == NULL ||
        (st->ser.BytesIO = PyObject_GetAttrString(io, "BytesIO")) == NULL)
        goto done;
    if (!PyType_Check(base) || ((PyTypeObject *)base)->tp_itemsize != 0) {
        PyErr_SetString(PyExc_ImportError, "_pickle.Unpickler has an unexpected layout");
        goto done;
    }
    /* our fields go right after _pickle's (private) struct */
    off = ((PyTypeObject *)base)->tp_basicsize;
    off = (off + (Py_ssize_t)sizeof(void *) - 1) / (Py_ssize_t)sizeof(void *) *
          (Py_ssize_t)sizeof(void *);
    st->ser.unpickler_off = off;
    SafeUnpickler_spec.basicsize = (int)(off + (Py_ssize_t)sizeof(CmUnpicklerExtra));
    st->ser.SafeUnpicklerType = PyType_FromModuleAndSpec(mod, &SafeUnpickler_spec, base);
    rc = st->ser.SafeUnpicklerType ? 0 : -1;
done:
    Py_XDECREF(pickle);
    Py_XDECREF(io);
    Py_XDECREF(base);
    return rc;
}
