/* The one place that talks to asyncio: running loop, futures, tasks. Every
 * call goes through PyObject_VectorcallMethod with names interned in the
 * module state. */
#ifndef CM_LOOP_H
#define CM_LOOP_H
#include "state.h"

PyObject *cm_loop_running(CmState *st); /* new ref */
/* loop.is_running(): 1/0, -1 with an exception. */
int cm_loop_is_running(CmState *st, PyObject *loop);
/* loop.is_closed(): 1 closed, 0 open. A loop that cannot tell (is_closed
 * raised: e.g. one the collector cleared) gives `unknown`; with unknown -1
 * its exception is left set, else it is cleared and an exception pending
 * before the call is kept. */
int cm_loop_is_closed(PyObject *loop, int unknown);
/* Module init: what cm_loop_create_future needs. 0 ok, -1 error. */
int cm_loop_init(CmState *st);
PyObject *cm_loop_create_future(CmState *st, PyObject *loop);               /* new ref */
PyObject *cm_loop_create_task(CmState *st, PyObject *loop, PyObject *coro); /* new ref */
int cm_future_done(CmState *st, PyObject *fut);                             /* 1/0, -1 error */
int cm_future_set_result(CmState *st, PyObject *fut, PyObject *value);
int cm_future_set_exception(CmState *st, PyObject *fut, PyObject *exc);
int cm_future_cancel(CmState *st, PyObject *fut);
/* fut.result(): new reference, or NULL with its exception (CancelledError
 * if it was cancelled) set. */
PyObject *cm_future_result(CmState *st, PyObject *fut);
int cm_future_add_done_callback(CmState *st, PyObject *fut, PyObject *cb);
/* The same for a callback that enters the context it needs itself: on an
 * asyncio Future it runs in one shared empty Context, which saves the
 * context copy add_done_callback makes otherwise (one object per call). */
int cm_future_add_done_callback_own_context(CmState *st, PyObject *fut, PyObject *cb);
/* loop.call_soon(cb, arg, context=ctx); ctx NULL or None: the current one. */
int cm_loop_call_soon_arg(CmState *st, PyObject *loop, PyObject *cb, PyObject *arg, PyObject *ctx);
/* The same through loop.call_soon_threadsafe, for a loop of another thread. */
int cm_loop_call_soon_threadsafe_arg(CmState *st, PyObject *loop, PyObject *cb, PyObject *arg,
                                     PyObject *ctx);

/* The empty Context the core's own callbacks run in, one per thread (a
 * Context is entered by one thread at a time; two loops in two threads
 * would otherwise fail each other's callbacks). Borrowed; NULL with an
 * exception. Call it in the thread whose loop will run the callback. */
PyObject *cm_loop_context_slow(CmState *st, void *tstate);
static inline PyObject *cm_loop_context(CmState *st)
{
    void *ts = PyThreadState_Get();
    return st->context_tstate == ts ? st->empty_context : cm_loop_context_slow(st, ts);
}
/* In a child after fork(): contexts made anew (the parent's may be copied
 * in the "entered" state). */
int cm_loop_after_fork_child(CmState *st);
/* Mark a finished future's exception as retrieved (no "never retrieved" log). */
void cm_future_consume(CmState *st, PyObject *fut);
/* The iterator `await fut` would use; new ref. */
PyObject *cm_await_iter(PyObject *awaitable);
/* Resume sub (from cm_await_iter) with arg, or throw exc into it: what
 * `await` does at each step of a C awaitable that awaits another one. An
 * iterator without throw() gets exc raised at its yield. */
PySendResult cm_await_resume(CmState *st, PyObject *sub, PyObject *arg, PyObject *exc,
                             PyObject **res);
/* An am_send outcome as __next__/send/throw return it: the value yielded,
 * or NULL with StopIteration(value) set on return (res is consumed). */
PyObject *cm_send_as_method(PySendResult r, PyObject *res);
int cm_is_cancelled_error(CmState *st, PyObject *exc);
/* Log a warning through logging.getLogger("cacheme"); never fails. */
void cm_log_warning(CmState *st, const char *fmt, PyObject *a, PyObject *b);

/* Network drivers: file descriptor watches and callbacks on the loop. The
 * callbacks are Python callables (a PyCFunction bound to the connection);
 * the loop's handle keeps them, and so the connection, alive until removed. */
int cm_loop_add_reader(CmState *st, PyObject *loop, int fd, PyObject *cb);
int cm_loop_remove_reader(CmState *st, PyObject *loop, int fd);
int cm_loop_add_writer(CmState *st, PyObject *loop, int fd, PyObject *cb);
int cm_loop_remove_writer(CmState *st, PyObject *loop, int fd);
/* loop.call_soon(cb) for the core's own callbacks (flushes, busy polls),
 * which read no context variable: they run in this thread's empty Context
 * (cm_loop_context), so no copy of the caller's is made per call. A new
 * reference to the handle. */
PyObject *cm_loop_call_soon(CmState *st, PyObject *loop, PyObject *cb);
PyObject *cm_loop_call_later(CmState *st, PyObject *loop, double delay, PyObject *cb); /* handle */
/* handle.cancel(); never fails (errors are written as unraisable). */
void cm_handle_cancel(CmState *st, PyObject *handle);
#endif
