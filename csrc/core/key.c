/* The full key: {prefix}:{node.key()}:{Meta.version}, the 0.3.0 layout,
 * built at most once per node instance and cached on it: in the one slot of
 * Node's base class _FullKeySlot, which C reads at a fixed offset (a Python
 * property keeps 0.3.0's attribute _full_key, None until built, readable).
 *
 * A local hit does not need the string at all: when the three parts are
 * 1-byte strings, the key's str hash is computed from them with the same
 * SipHash-1-3 and secret CPython uses (siphash.h), and the store compares the
 * parts in place. The string is built only when something keeps it: a miss,
 * a fill, node.full_key(). Its hash is then stored, not computed again. */
#include "core/key.h"

#include <structmember.h>

#include "base/compat.h"
#include "core/nodecfg.h"
#include "core/siphash.h"

#if CM_KEY_PARTS
#if PY_VERSION_HEX >= 0x030D0000
/* 3.13 moved _Py_HashSecret_t to the internal headers; the exported symbol
 * and the layout of its first 16 bytes are those of 3.11 and 3.12. */
typedef union {
    unsigned char uc[24];
    struct {
        uint64_t k0;
        uint64_t k1;
    } siphash;
} CmPyHashSecret;
PyAPI_DATA(CmPyHashSecret) _Py_HashSecret;
#endif
#endif

/* CPython's SipHash keys as its pysiphash() passes them (through _le64toh),
 * and whether the parts path may use them: set by cm_key_init once a probe
 * hashed like hash(). Plain integers, the same for every interpreter. */
#if CM_KEY_PARTS
static uint64_t sip_k0, sip_k1;
#endif
static int sip_ok;

static PyObject *concat3(PyObject *a, PyObject *b, PyObject *c)
{
    Py_ssize_t la = PyUnicode_GET_LENGTH(a), lb = PyUnicode_GET_LENGTH(b),
               lc = PyUnicode_GET_LENGTH(c);
    Py_ssize_t n = la + lb + lc + 2;
    if (PyUnicode_IS_ASCII(a) && PyUnicode_IS_ASCII(b) && PyUnicode_IS_ASCII(c)) {
        PyObject *s = PyUnicode_New(n, 127);
        if (s == NULL)
            return NULL;
        char *p = (char *)PyUnicode_1BYTE_DATA(s);
        memcpy(p, PyUnicode_1BYTE_DATA(a), la);
        p[la] = ':';
        memcpy(p + la + 1, PyUnicode_1BYTE_DATA(b), lb);
        p[la + 1 + lb] = ':';
        memcpy(p + la + 2 + lb, PyUnicode_1BYTE_DATA(c), lc);
        return s;
    }
    Py_UCS4 max = PyUnicode_MAX_CHAR_VALUE(a);
    if (PyUnicode_MAX_CHAR_VALUE(b) > max)
        max = PyUnicode_MAX_CHAR_VALUE(b);
    if (PyUnicode_MAX_CHAR_VALUE(c) > max)
        max = PyUnicode_MAX_CHAR_VALUE(c);
    PyObject *s = PyUnicode_New(n, max);
    if (s == NULL)
        return NULL;
    if (PyUnicode_CopyCharacters(s, 0, a, 0, la) < 0 || PyUnicode_WriteChar(s, la, ':') < 0 ||
        PyUnicode_CopyCharacters(s, la + 1, b, 0, lb) < 0 ||
        PyUnicode_WriteChar(s, la + 1 + lb, ':') < 0 ||
        PyUnicode_CopyCharacters(s, la + 2 + lb, c, 0, lc) < 0) {
        Py_DECREF(s);
        return NULL;
    }
    return s;
}

/* Where node keeps its cached full key: the slot of _FullKeySlot, or NULL
 * for an object outside that hierarchy (borrowed address). */
static inline PyObject **key_slot(CmState *st, PyObject *node)
{
    if (st->key_slot_offset > 0 && PyObject_TypeCheck(node, (PyTypeObject *)st->KeySlotType))
        return (PyObject **)((char *)node + st->key_slot_offset);
    return NULL;
}

/* PyObject_GetOptionalAttr (3.13): 1 and *res, 0 and NULL for a missing
 * attribute (no exception), -1 on error. */
static int get_optional_attr(PyObject *obj, PyObject *name, PyObject **res)
{
#if PY_VERSION_HEX >= 0x030D0000
    return PyObject_GetOptionalAttr(obj, name, res);
#elif CM_PRIVATE_OK
    return _PyObject_LookupAttr(obj, name, res); /* no AttributeError made */
#else
    if ((*res = PyObject_GetAttr(obj, name)) != NULL)
        return 1;
    if (!PyErr_ExceptionMatches(PyExc_AttributeError))
        return -1;
    PyErr_Clear();
    return 0;
#endif
}

#ifndef NDEBUG
/* hash() of a fresh copy of s, for asserts on a hash stored by hand */
static Py_hash_t fresh_hash(PyObject *s)
{
    PyObject *copy =
        PyUnicode_FromKindAndData(PyUnicode_KIND(s), PyUnicode_DATA(s), PyUnicode_GET_LENGTH(s));
    Py_hash_t h = copy != NULL ? PyObject_Hash(copy) : -1;
    Py_XDECREF(copy);
    return h;
}
#endif

PyObject *cm_key_cached(CmState *st, PyObject *node)
{
    PyObject *cached;
    PyObject **slot = key_slot(st, node);
    if (slot != NULL) {
        if ((cached = *slot) == NULL)
            return NULL;
        Py_INCREF(cached);
    }
    /* not a Node: a missing attribute is the common case, no exception */
    else if (get_optional_attr(node, st->s__full_key, &cached) <= 0)
        return NULL;
    if (PyUnicode_CheckExact(cached)) {
        if (PyObject_Hash(cached) == -1) {
            Py_DECREF(cached);
            return NULL;
        }
        return cached;
    }
    Py_DECREF(cached);
    return NULL;
}

PyObject *cm_key_call_method(CmState *st, PyObject *node)
{
    PyObject *key =
        PyObject_VectorcallMethod(st->s_key, &node, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    return key == NULL || PyUnicode_Check(key) ? key : cm_key_not_str(node, key);
}

PyObject *cm_key_not_str(PyObject *node, PyObject *key)
{
    PyErr_Format(PyExc_TypeError, "%.100s.key() must return str, not %.100s",
                 Py_TYPE(node)->tp_name, Py_TYPE(key)->tp_name);
    Py_DECREF(key);
    return NULL;
}

void cm_key_affix_init(CmKeyAffix *a, PyObject *prefix, PyObject *version)
{
    Py_ssize_t lp = PyUnicode_GET_LENGTH(prefix), lv = PyUnicode_GET_LENGTH(version);

    memset(a, 0, sizeof(*a));
    a->head_len = -1;
    if (!CM_KEY_PARTS || !sip_ok || PyUnicode_KIND(prefix) != PyUnicode_1BYTE_KIND ||
        PyUnicode_KIND(version) != PyUnicode_1BYTE_KIND || lp + 1 > CM_KEY_HEAD_MAX ||
        lv + 1 > CM_KEY_TAIL_MAX)
        return;
    memcpy(a->head, PyUnicode_1BYTE_DATA(prefix), (size_t)lp);
    a->head[lp] = ':';
    a->tail[0] = ':';
    memcpy(a->tail + 1, PyUnicode_1BYTE_DATA(version), (size_t)lv);
    a->head_len = lp + 1;
    a->tail_len = lv + 1;
    a->ascii = PyUnicode_IS_ASCII(prefix) && PyUnicode_IS_ASCII(version);
#if CM_KEY_PARTS
    cm_siphash13_init(a->sip, sip_k0, sip_k1);
    cm_siphash13_blocks(a->sip, a->head, (size_t)a->head_len / 8);
#endif
}

/* The three parts copied one after the other, for any prefix and version. */
int cm_key_parts_general(CmState *st, PyObject *key, PyObject *version, CmKeyParts *parts,
                         Py_hash_t *hash)
{
#if CM_KEY_PARTS
    PyObject *pieces[3] = {st->prefix, key, version}; // borrowed
    Py_ssize_t n = 0;
    if (!sip_ok)
        return 0;
    parts->ascii =
        PyUnicode_IS_ASCII(st->prefix) && PyUnicode_IS_ASCII(key) && PyUnicode_IS_ASCII(version);
    for (int i = 0; i < 3; i++) {
        PyObject *p = pieces[i]; // borrowed
        Py_ssize_t len = PyUnicode_GET_LENGTH(p);
        if (PyUnicode_KIND(p) != PyUnicode_1BYTE_KIND || n + len + 1 > CM_KEY_BUF)
            return 0;
        cm_copy_short(parts->data + n, PyUnicode_1BYTE_DATA(p), (size_t)len);
        n += len;
        if (i < 2)
            parts->data[n++] = ':';
    }
    parts->len = n;
    Py_hash_t x = (Py_hash_t)cm_siphash13(sip_k0, sip_k1, parts->data, (size_t)n);
    *hash = x == -1 ? -2 : x; /* as _Py_HashBytes */
    return 1;
#else
    (void)st, (void)key, (void)version, (void)parts, (void)hash;
    return 0;
#endif
}

PyObject *cm_key_build(CmState *st, PyObject *node, PyObject *key, PyObject *version,
                       Py_hash_t known_hash)
{
    PyObject *full = concat3(st->prefix, key, version);
    if (full == NULL)
        return NULL;
    if (known_hash != -1) {
        ((PyASCIIObject *)full)->hash = known_hash;
        assert(known_hash == fresh_hash(full));
    } else if (PyObject_Hash(full) == -1) {
        Py_DECREF(full);
        return NULL;
    }
    /* cache on the instance; an object that refuses the attribute goes without */
    PyObject **slot = node != NULL ? key_slot(st, node) : NULL;
    if (slot != NULL)
        Py_XSETREF(*slot, Py_NewRef(full));
    else if (node != NULL && PyObject_SetAttr(node, st->s__full_key, full) < 0) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) {
            Py_DECREF(full);
            return NULL;
        }
        PyErr_Clear();
    }
    return full;
}

PyObject *cm_key_build_parts(PyObject **slot, const CmKeyParts *parts, Py_hash_t hash)
{
    PyObject *full = PyUnicode_New(parts->len, parts->ascii ? 127 : 255);
    if (full == NULL)
        return NULL;
    memcpy(PyUnicode_1BYTE_DATA(full), parts->data, (size_t)parts->len);
    ((PyASCIIObject *)full)->hash = hash;
    assert(hash == fresh_hash(full));
    Py_XSETREF(*slot, Py_NewRef(full));
    return full;
}

PyObject *cm_key_of_node(CmState *st, PyObject *node)
{
    PyObject *key = cm_key_cached(st, node);
    if (key == NULL && !PyErr_Occurred())
        key = PyObject_VectorcallMethod(st->s_full_key, &node, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                        NULL);
    if (key != NULL && !PyUnicode_Check(key)) {
        PyErr_Format(PyExc_TypeError, "full_key() must return str, not %.100s",
                     Py_TYPE(key)->tp_name);
        Py_CLEAR(key);
    }
    return key;
}

PyObject *cm_full_key(CmState *st, PyObject *node, CmNodeConfigObject *cfg)
{
    PyObject *full = cm_key_cached(st, node);
    if (full != NULL || PyErr_Occurred())
        return full;
    PyObject *key = cm_key_call(st, node, cfg);
    if (key == NULL)
        return NULL;
    full = cm_key_build(st, node, key, cfg->version, -1);
    Py_DECREF(key);
    return full;
}

/* _hash_parts(key, version): the hash of "{prefix}:{key}:{version}" computed
 * from its parts, or None when they are not all 1-byte strings (tests) */
static PyObject *py_hash_parts(PyObject *mod, PyObject *args)
{
    CmState *st = cm_state_from_module(mod);
    PyObject *key, *version;
    CmKeyParts parts;
    Py_hash_t h;
    CmKeyAffix affix;
    if (!PyArg_ParseTuple(args, "UU:_hash_parts", &key, &version))
        return NULL;
    cm_key_affix_init(&affix, st->prefix, version);
    if (!cm_key_parts(st, &affix, key, version, &parts, &h))
        Py_RETURN_NONE;
    return PyLong_FromSsize_t(h);
}

/* _set_key_slot(cls): cls.__slots__ == ("_cacheme_full_key",) holds the
 * cached full key of its instances (cacheme.models._FullKeySlot) */
static PyObject *py_set_key_slot(PyObject *mod, PyObject *cls)
{
    CmState *st = cm_state_from_module(mod);
    if (!PyType_Check(cls)) {
        PyErr_SetString(PyExc_TypeError, "_set_key_slot() expects a class");
        return NULL;
    }
    PyObject *d =
        PyDict_GetItemString(((PyTypeObject *)cls)->tp_dict, "_cacheme_full_key"); // borrowed
    if (d == NULL || !Py_IS_TYPE(d, &PyMemberDescr_Type) ||
        ((PyMemberDescrObject *)d)->d_member->type != T_OBJECT_EX ||
        (((PyMemberDescrObject *)d)->d_member->flags & READONLY)) {
        PyErr_SetString(PyExc_TypeError, "_set_key_slot(): the class must have the writable slot "
                                         "'_cacheme_full_key'");
        return NULL;
    }
    Py_XSETREF(st->KeySlotType, Py_NewRef(cls));
    st->key_slot_offset = ((PyMemberDescrObject *)d)->d_member->offset;
    Py_RETURN_NONE;
}

static PyMethodDef key_functions[] = {
    {"_hash_parts", py_hash_parts, METH_VARARGS, NULL},
    {"_set_key_slot", py_set_key_slot, METH_O, NULL},
    {NULL, NULL},
};

/* Read CPython's SipHash keys and check them: our SipHash-1-3 of a few
 * probes (lengths around the 8-byte word; not 0, which hashes to 0) must
 * equal their str hash, else
 * the parts path stays off and keys are built and hashed by CPython. */
static int key_secret_init(void)
{
#if CM_KEY_PARTS
    static const char probe[] = "cacheme:probe-of-the-str-hash:1";
    static const Py_ssize_t lengths[] = {1, 7, 8, 9, 16, 23, (Py_ssize_t)sizeof(probe) - 1};
    uint64_t k0 = cm_le64(_Py_HashSecret.siphash.k0), k1 = cm_le64(_Py_HashSecret.siphash.k1);
    int ok = 1;
    for (size_t i = 0; ok && i < sizeof(lengths) / sizeof(lengths[0]); i++) {
        PyObject *s = PyUnicode_FromStringAndSize(probe, lengths[i]);
        if (s == NULL)
            return -1;
        Py_hash_t h = PyObject_Hash(s);
        Py_DECREF(s);
        if (h == -1)
            return -1;
        Py_hash_t x = (Py_hash_t)cm_siphash13(k0, k1, probe, (size_t)lengths[i]);
        ok = (x == -1 ? -2 : x) == h;
    }
    sip_k0 = k0, sip_k1 = k1, sip_ok = ok;
#endif
    return 0;
}

int cm_key_init(PyObject *mod, CmState *st)
{
    (void)st;
    if (key_secret_init() < 0 || PyModule_AddFunctions(mod, key_functions) < 0)
        return -1;
    /* _key_parts: a local hit hashes the key from its parts (else builds it);
     * _private_api: the version-gated private calls are on (compat.h) */
    if (PyModule_AddObjectRef(mod, "_private_api", CM_PRIVATE_OK ? Py_True : Py_False) < 0)
        return -1;
    return PyModule_AddObjectRef(mod, "_key_parts", sip_ok ? Py_True : Py_False);
}
