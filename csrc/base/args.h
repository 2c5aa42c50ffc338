/* The arguments of a storage method, taken as 0.3.0's Python methods took
 * them: each parameter by position or by keyword, every one required.
 *
 * Methods are METH_FASTCALL | METH_KEYWORDS. A call with no keywords and
 * the right count (every call the flight, get_all and the Python wrappers
 * make) is the args array itself: one comparison more than METH_FASTCALL.
 * Only a call with keywords, or a wrong one, goes out of line to map
 * keywords onto positions, and raises the TypeError a Python method would
 * (same words, so code that matched 0.3.0's messages still matches).
 * Public API only: CPython's _PyArg_Parser is private. */
#ifndef CM_ARGS_H
#define CM_ARGS_H
#include <Python.h>

typedef struct {
    const char *name;          /* the method's name, for errors: "get" */
    Py_ssize_t n;              /* how many parameters */
    const char *const *params; /* their names, in order */
} CmArgSpec;

/* The slow path of cm_args: buf (room for spec->n) filled with borrowed
 * references, or NULL with a TypeError naming self's type and the method. */
PyObject *const *cm_args_map(PyObject *self, const CmArgSpec *spec, PyObject *const *args,
                             Py_ssize_t nargs, PyObject *kwnames, PyObject **buf);

/* spec->n arguments in parameter order (borrowed: the caller's array, or
 * buf), or NULL with a TypeError. */
static inline PyObject *const *cm_args(PyObject *self, const CmArgSpec *spec, PyObject *const *args,
                                       Py_ssize_t nargs, PyObject *kwnames, PyObject **buf)
{
    if (kwnames == NULL && nargs == spec->n)
        return args;
    return cm_args_map(self, spec, args, nargs, kwnames, buf);
}

/* A spec of the method NAME and its parameters' names, in order:
 * CM_ARGSPEC("get", "node", "serializer"). */
#define CM_ARGSPEC(NAME, ...)                                                                      \
    {                                                                                              \
        NAME, CM_ARGS_COUNT(__VA_ARGS__), CM_ARGS_NAMES(__VA_ARGS__)                               \
    }
#define CM_ARGS_NAMES(...) ((const char *const[]){__VA_ARGS__})
#define CM_ARGS_COUNT(...) ((Py_ssize_t)(sizeof(CM_ARGS_NAMES(__VA_ARGS__)) / sizeof(char *)))

#endif
