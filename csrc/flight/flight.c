/* The singleflight's module-level parts: its types and functions on the
 * module, its state's traverse and clear, and the after-fork rule. The
 * model is in flight.h; the files of flight/ are:
 *   table.c   the key -> flight table and the record's operations
 *   call.c    the GetCall type (what get() returns on a local miss)
 *   leader.c  the leader's state machine: remote reads, load, fills
 *   waiter.c  a call waiting as its own future
 *   proxy.c   the FlightProxy a leader's Task awaits
 *   remote.c  the interface to remote storages (remote.h)
 *   handle.c  flights driven from Python (FlightHandle, for get_all) */
#include "flight/call.h"

void cm_flight_after_fork_child(CmState *st)
{
    /* the parent's flights stay with the calls that hold them (they may go
     * on if the child runs the copied loop), but nobody joins them: a get()
     * in the child loads in the child */
    cm_flight_table_empty(st);
}

/* _set_load_timeout_wrapper(fn): fn(awaitable, seconds) -> awaitable */
static PyObject *py_set_load_timeout_wrapper(PyObject *mod, PyObject *fn)
{
    if (!PyCallable_Check(fn)) {
        PyErr_SetString(PyExc_TypeError, "_set_load_timeout_wrapper(fn): fn must be callable");
        return NULL;
    }
    CmState *st = cm_state_from_module(mod);
    Py_XSETREF(st->flight.load_timeout_wrap, Py_NewRef(fn));
    Py_RETURN_NONE;
}

static PyObject *py_flights_in_table(PyObject *mod, PyObject *Py_UNUSED(x))
{
    return PyLong_FromSize_t(cm_state_from_module(mod)->flight.table.used);
}

static PyMethodDef flight_functions[] = {
    {"_flights_in_table", py_flights_in_table, METH_NOARGS, "keys in flight (for tests)"},
    {"_set_load_timeout_wrapper", py_set_load_timeout_wrapper, METH_O, NULL},
    {NULL, NULL},
};

int cm_flight_init(PyObject *mod, CmState *st)
{
    if (cm_call_init(mod, st) < 0 || cm_proxy_init(mod, st) < 0 || cm_handle_init(mod, st) < 0)
        return -1;
    st->nodecfg_built = cm_remote_cover_locals;
    return PyModule_AddFunctions(mod, flight_functions);
}

int cm_flight_state_traverse(CmState *st, visitproc visit, void *arg)
{
    CmFlightState *fs = &st->flight;
    Py_VISIT(fs->CallType);
    Py_VISIT(fs->ProxyType);
    Py_VISIT(fs->FlightHandleType);
    Py_VISIT(fs->load_timeout_wrap);
    int r = cm_remote_traverse(st, visit, arg);
    return r != 0 ? r : cm_flight_table_traverse(st, visit, arg);
}

void cm_flight_state_clear(CmState *st)
{
    CmFlightState *fs = &st->flight;
    cm_flight_table_free(st);
    cm_call_free_clear(st);
    cm_proxy_free_clear(st);
    cm_remote_clear(st);
    Py_CLEAR(fs->CallType);
    Py_CLEAR(fs->ProxyType);
    Py_CLEAR(fs->FlightHandleType);
    Py_CLEAR(fs->load_timeout_wrap);
}
