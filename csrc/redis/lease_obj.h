/* The lease object shared by redis/lease.c (one key's lease) and
 * redis/lease_group.c (get_all's leases). Private to them. */
#ifndef CM_REDIS_LEASE_OBJ_H
#define CM_REDIS_LEASE_OBJ_H
#include "redis/lease.h"

/* where a lease is */
enum {
    L_TRY,     /* SET NX PX sent */
    L_SUB,     /* not ours: its channel's SUBSCRIBE sent, not confirmed yet (the
                  expiry timer bounds the wait) */
    L_VERIFY,  /* got it; GET of the value sent (filled since the flight read it?) */
    L_CHECK,   /* GET of the value sent */
    L_TTL,     /* PTTL of the lease sent */
    L_IDLE,    /* waiting for a message or the expiry timer */
    L_HELD,    /* ours: the flight loads, then releases */
    L_RELEASE, /* the release script sent */
    L_DONE,    /* the flight has its outcome, or left */
};

typedef struct {
    PyObject_HEAD
    CmState *st;
    PyObject *client; /* the storage (a RedisClient) */
    PyObject *node, *ser;
    PyObject *lkey;  /* bytes: the lease key, also its channel */
    PyObject *token; /* bytes: ours, unique per lease taken */
    PyObject *loop;
    PyObject *fut;   /* what the flight awaits: (self, None) or (None, value) */
    PyObject *timer; /* the lease's expiry while waiting, or NULL */
    PyObject *on_reply, *on_timer, *on_fut; /* bound callbacks, made once */
    /* get_all: a member's group (strong), its index in the group's results;
     * a group's members (list) and results (list of (lease, value)), and
     * how many members have not finished */
    PyObject *group;
    Py_ssize_t index;
    PyObject *members, *results;
    Py_ssize_t remaining;
    int state;  /* L_* */
    int sent;   /* the state of the command in flight */
    int woken;  /* a message came while a command was out */
    int listen; /* subscribed to lkey (holds a reference to itself) */
    int owned;  /* taken (SET NX answered OK), its release not answered yet */
    long forks; /* st->forks when owned: a lease inherited over fork is the parent's */
} CmLeaseObject;

/* lease.c, for lease_group.c */
/* A new lease object with no key yet (the group's), tracked; NULL with an
 * exception. */
CmLeaseObject *cm_rlease_alloc(CmState *st);
/* A new lease of node on storage, not yet sent; NULL with an exception. */
CmLeaseObject *cm_rlease_new(CmState *st, PyObject *storage, PyObject *node, PyObject *ser,
                             PyObject *loop);
/* Call self's on_fut when fut (self->fut) is done: 0, or -1 with an exception. */
int cm_rlease_watch_fut(CmLeaseObject *self);
/* Send the SET NX PX: 0, or -1 with an exception. */
int cm_rlease_try(CmLeaseObject *self);
/* Give the lease up (compare-and-delete, PUBLISH). */
void cm_rlease_release(CmLeaseObject *self);
/* Stop listening (timer, subscription). */
void cm_rlease_quiet(CmLeaseObject *self);

/* lease_group.c, for lease.c */
/* Member m finished with (lease, value) or exc (borrowed). */
void cm_rlease_group_put(CmLeaseObject *m, PyObject *lease, PyObject *value, PyObject *exc);
/* The group's future is done before its members: they stop. */
void cm_rlease_group_left(CmLeaseObject *g);
#endif
