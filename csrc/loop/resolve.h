/* Host names looked up off the loop thread (cacheme/_resolve.py).
 *
 * getaddrinfo blocks for as long as the resolver takes, and a blocked loop
 * thread stalls every task (releasing the GIL saves only other threads). The
 * Redis, PostgreSQL and MySQL connects ask cm_resolve_needed first: an IP
 * literal or a socket path connects at once; a name is resolved by
 * cm_resolve_start in the loop's executor (loop.getaddrinfo) while the
 * connect's deadline runs, and the driver connects to the numeric address
 * when the callback comes. */
#ifndef CM_RESOLVE_H
#define CM_RESOLVE_H
#include <Python.h>

/* 1 if host is a name to look up; 0 for NULL/"", an IP literal (v4 or v6,
 * with a %scope or in brackets) or a path (starts with '/' or '@'). */
int cm_resolve_needed(const char *host);

/* Start looking up hosts (a list of str) on loop: a new reference to the
 * task, whose result is a list (one per host) of lists of numeric address
 * strings; cb(task) is called on the loop once it is done. Cancel the task
 * to give up. NULL with an exception. */
PyObject *cm_resolve_start(PyObject *loop, PyObject *hosts, PyObject *cb);

/* The result of a done task: a new reference, or NULL with an exception
 * (the lookup's error, or CancelledError). */
PyObject *cm_resolve_result(PyObject *task);

#endif
