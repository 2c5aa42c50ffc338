/* Host names looked up off the loop thread: see resolve.h. */
#include "loop/resolve.h"

#include "base/exc.h"

#include <arpa/inet.h>
#include <string.h>

int cm_resolve_needed(const char *host)
{
    if (host == NULL || host[0] == '\0' || host[0] == '/' || host[0] == '@')
        return 0;
    unsigned char buf[sizeof(struct in6_addr)];
    if (inet_pton(AF_INET, host, buf) == 1)
        return 0;
    char v6[INET6_ADDRSTRLEN + 64];
    size_t n = strlen(host);
    if (n >= sizeof(v6))
        return 1;
    const char *h = host;
    if (h[0] == '[' && n > 2 && h[n - 1] == ']') {
        h++;
        n -= 2;
    }
    memcpy(v6, h, n);
    v6[n] = '\0';
    char *scope = strchr(v6, '%');
    if (scope != NULL)
        *scope = '\0';
    return inet_pton(AF_INET6, v6, buf) == 1 ? 0 : 1;
}

PyObject *cm_resolve_start(PyObject *loop, PyObject *hosts, PyObject *cb)
{
    PyObject *mod = PyImport_ImportModule("cacheme._resolve");
    if (mod == NULL)
        return NULL;
    PyObject *coro = PyObject_CallMethod(mod, "resolve", "OO", loop, hosts);
    Py_DECREF(mod);
    if (coro == NULL)
        return NULL;
    PyObject *task = PyObject_CallMethod(loop, "create_task", "O", coro);
    Py_DECREF(coro);
    if (task == NULL)
        return NULL;
    PyObject *r = PyObject_CallMethod(task, "add_done_callback", "O", cb);
    if (r == NULL) {
        PyObject *exc = cm_exc_take();
        PyObject *x = PyObject_CallMethod(task, "cancel", NULL);
        if (x == NULL)
            PyErr_Clear();
        Py_XDECREF(x);
        Py_DECREF(task);
        cm_exc_restore(exc);
        return NULL;
    }
    Py_DECREF(r);
    return task;
}

PyObject *cm_resolve_result(PyObject *task) { return PyObject_CallMethod(task, "result", NULL); }
