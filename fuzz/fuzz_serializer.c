/* libFuzzer target for the serializer decoders: the MessagePack reader, the
 * zlib path and the 0.3.0 object decoder, exactly as cacheme._core runs them,
 * inside an embedded CPython.
 *
 * The first input byte picks the path, the rest is the cached value:
 *   0 MsgPackSerializer.loads      1 CompressedMsgPackSerializer.loads
 *   2 JSONSerializer.loads         3 CompressedJSONSerializer.loads
 *   4 cm_zlib_decompress alone (plain C, 64 KiB output limit)
 *   5 PickleSerializer.loads       6 CompressedPickleSerializer.loads
 *     (for 5 and 6 the input is the raw pickle: the harness adds the base64,
 *     and for 6 the zlib, that the serializer takes off again)
 * A decode may fail, but only with SerializerError; anything else (another
 * exception type escaping, a crash, an ASan report) is a finding. A value
 * that decodes is encoded again, to run the encoder on odd shapes.
 * The pickle allowlist is checked with canaries in __main__: calling boom()
 * or making an Evil (not allowed) aborts, and so does any decode that adds
 * a module to sys.modules (decoding never imports).
 *
 * The serializer files are compiled in and registered as the builtin module
 * _fuzzcore (this file provides cm_module_def), so no other part of the
 * core is needed. Python allocates with malloc so ASan sees every object. */
#include "ser/compress.h"
#include "ser/msgpack_codec.h"
#include "ser/serializer.h"

#include <stdlib.h>

static int fuzz_exec(PyObject *mod)
{
    CmState *st = cm_state_from_module(mod);
#define CM_INTERN(n)                                                                               \
    if ((st->s_##n = PyUnicode_InternFromString(#n)) == NULL)                                      \
        return -1;
    CM_INTERNED_NAMES(CM_INTERN)
#undef CM_INTERN
    return cm_serializer_init(mod, st);
}

static int fuzz_traverse(PyObject *mod, visitproc visit, void *arg)
{
    return cm_ser_state_traverse(&cm_state_from_module(mod)->ser, visit, arg);
}

static int fuzz_clear(PyObject *mod)
{
    CmState *st = cm_state_from_module(mod);
#define CM_CLEAR_NAME(n) Py_CLEAR(st->s_##n);
    CM_INTERNED_NAMES(CM_CLEAR_NAME)
#undef CM_CLEAR_NAME
    cm_ser_state_clear(&st->ser);
    return 0;
}

static PyModuleDef_Slot fuzz_slots[] = {{Py_mod_exec, fuzz_exec}, {0, NULL}};

PyModuleDef cm_module_def = {
    PyModuleDef_HEAD_INIT, .m_name = "_fuzzcore",       .m_size = sizeof(CmState),
    .m_slots = fuzz_slots, .m_traverse = fuzz_traverse, .m_clear = fuzz_clear,
};

static PyObject *PyInit__fuzzcore(void) { return PyModuleDef_Init(&cm_module_def); }

#define FUZZ_NSERS 6
static PyObject *fuzz_loads[FUZZ_NSERS]; /* bound loads methods */
static PyObject *fuzz_dumps[FUZZ_NSERS]; /* bound dumps methods */
static PyObject *fuzz_error;             /* SerializerError */
static PyObject *fuzz_wrap[2];           /* raw pickle -> what modes 5 and 6 store */

static const char fuzz_setup[] =
    "import base64, dataclasses, datetime, decimal, enum, os, typing, uuid, zlib\n"
    "import _fuzzcore as c\n"
    "def boom(*a, **k):\n"
    "    os.abort()\n"
    "class Evil:\n"
    "    def __new__(cls, *a, **k):\n"
    "        os.abort()\n"
    "class CP(c.CompressedSerializer):\n"
    "    serializer = c.PickleSerializer()\n"
    "def wrap5(raw):\n"
    "    return base64.encodebytes(raw)\n"
    "def wrap6(raw):\n"
    "    return zlib.compress(base64.encodebytes(raw), 3)\n"
    "class CM(c.CompressedSerializer):\n"
    "    serializer = c.MsgPackSerializer()\n"
    "class CJ(c.CompressedSerializer):\n"
    "    serializer = c.JSONSerializer()\n"
    "@dataclasses.dataclass\n"
    "class D:\n"
    "    a: int = 0\n"
    "    b: typing.List['D'] = None\n"
    "    c: typing.Optional['D'] = None\n"
    "    t: typing.Tuple[int, ...] = ()\n"
    "class E(enum.Enum):\n"
    "    A = 1\n"
    "    B = 'b'\n"
    "sers = [c.MsgPackSerializer(), CM(), c.JSONSerializer(), CJ(),\n"
    "        c.PickleSerializer(), CP()]\n";

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    PyPreConfig pre;
    PyObject *main_dict, *sers;
    int i;
    (void)argc;
    (void)argv;

    PyPreConfig_InitPythonConfig(&pre);
    pre.allocator = PYMEM_ALLOCATOR_MALLOC;
    if (PyStatus_Exception(Py_PreInitialize(&pre)))
        abort();
    if (PyImport_AppendInittab("_fuzzcore", PyInit__fuzzcore) < 0)
        abort();
    Py_InitializeEx(0);
    if (PyRun_SimpleString(fuzz_setup) != 0)
        abort();
    main_dict = PyModule_GetDict(PyImport_AddModule("__main__")); // borrowed
    sers = PyDict_GetItemString(main_dict, "sers");               // borrowed
    fuzz_error = PyObject_GetAttrString(PyDict_GetItemString(main_dict, "c"), "SerializerError");
    if (sers == NULL || fuzz_error == NULL)
        abort();
    fuzz_wrap[0] = PyDict_GetItemString(main_dict, "wrap5"); // borrowed, __main__ keeps it
    fuzz_wrap[1] = PyDict_GetItemString(main_dict, "wrap6"); // borrowed
    if (fuzz_wrap[0] == NULL || fuzz_wrap[1] == NULL)
        abort();
    for (i = 0; i < FUZZ_NSERS; i++) {
        fuzz_loads[i] = PyObject_GetAttrString(PyList_GET_ITEM(sers, i), "loads");
        fuzz_dumps[i] = PyObject_GetAttrString(PyList_GET_ITEM(sers, i), "dumps");
        if (!fuzz_loads[i] || !fuzz_dumps[i])
            abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    PyObject *blob, *obj, *again;
    Py_ssize_t nmodules = PyDict_Size(PyImport_GetModuleDict());
    int mode;

    if (size < 1)
        return 0;
    mode = data[0] % 7;
    if (mode == 4) {
        CmZBuf z;
        const char *err = NULL;
        if (cm_zlib_decompress(data + 1, size - 1, 64 * 1024, &z, &err) == 0)
            free(z.data);
        else if (err == NULL)
            abort();
        return 0;
    }
    if (mode > 4)
        mode--; /* sers[4], sers[5]: the pickle pair */
    if ((blob = PyBytes_FromStringAndSize((const char *)data + 1, (Py_ssize_t)size - 1)) == NULL)
        abort();
    if (mode >= 4) {
        PyObject *wrapped = PyObject_CallOneArg(fuzz_wrap[mode - 4], blob);
        Py_DECREF(blob);
        if ((blob = wrapped) == NULL)
            abort();
    }
    obj = PyObject_CallOneArg(fuzz_loads[mode], blob);
    Py_DECREF(blob);
    if (PyDict_Size(PyImport_GetModuleDict()) != nmodules)
        abort(); /* a decode imported a module */
    if (obj == NULL) {
        if (!PyErr_ExceptionMatches(fuzz_error)) {
            PyErr_Print();
            abort(); /* decode errors must all be SerializerError */
        }
        PyErr_Clear();
        return 0;
    }
    again = PyObject_CallOneArg(fuzz_dumps[mode], obj);
    if (again == NULL) {
        if (PyErr_ExceptionMatches(PyExc_SystemError)) {
            PyErr_Print();
            abort();
        }
        PyErr_Clear();
    }
    Py_XDECREF(again);
    Py_DECREF(obj);
    return 0;
}
