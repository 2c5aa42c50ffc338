/* What the two halves of the 0.3.0 object encoding share (object_encode.c,
 * object_decode.c): lookups in modules already imported and in class
 * dicts, which never import and never run module __getattr__, and the
 * table of the value types pydantic v1 encoded by name. Defined in object.c. */
#ifndef CM_SER_OBJECT_H
#define CM_SER_OBJECT_H

#include "state.h"

/* module.name from sys.modules and the module's __dict__ only; borrowed,
 * NULL without an exception if the module is not loaded or lacks it. */
PyObject *cm_ser_imported(const char *module, const char *name);

/* name in tp's MRO dicts; borrowed, NULL without an exception if absent. */
PyObject *cm_ser_type_lookup(PyTypeObject *tp, PyObject *name);

/* pydantic BaseModel classes that exist in this process (v2, v1 or the
 * pydantic.v1 shim inside v2), borrowed, into out; how many there are. */
int cm_ser_pydantic_bases(PyObject *out[2]);

/* tp's __dataclass_fields__ dict; borrowed, NULL if not a dataclass. */
PyObject *cm_ser_dataclass_fields(CmState *st, PyTypeObject *tp);

/* True for a real dataclass field (not ClassVar / InitVar). */
int cm_ser_is_plain_field(PyObject *field);

/* Value types that pydantic v1 encodes as str(obj) / list(obj), found only if
 * their module is loaded (an object of that type cannot exist otherwise). */
typedef struct {
    const char *module, *name;
    char kind; /* 's' str(obj), 'l' list(obj), 'p' obj.pattern */
} CmSerNamed;

/* ends with an entry whose module is NULL */
extern const CmSerNamed cm_ser_named[];

#endif
