/* The take-and-give-back of a ConnectionPool.connection() block, compiled.

   Why: on a client thread pinned to one core, what a pool adds to each query's client
   CPU decides the vs-raw rows. The Python block adds about 13,700 instructions per
   SELECT 1, the minimal pool of benchmarks/floor.py about 6,900; this one adds about
   6,200 (benchmarks/RESULTS.md, "Instructions per checkout and per query").

   What it relies on (and why it is built only where that holds):
   - The GIL. A sequence of C calls that runs no Python code and does not release the
     GIL cannot be interleaved with any other thread's Python code. Every change to a
     pool's state happens under the pool's `_lock`; if that lock is free when the
     sequence starts, no other thread is inside a critical section, and none can enter
     one before the sequence ends (entering needs the GIL back). So the sequence acts
     as if it held the lock, without taking it. setup.py does not build this module on
     a free-threaded CPython, where the pool uses its Python blocks, which take the lock.
   - The lock is tested by reading its `locked` byte where the layout is known to
     match (checked at import, see check_lock_layout), else by calling locked().
   - No Python code between the "lock is free" test and the last store: only C
     attribute reads and stores on connections of a plain class (checked once, with
     its hash and equality: see _compiled.desk_for; a connection of any other class
     goes to Python; of the pool, only the containers the desk took are used), deque and
     list and dict operations, and float and int arithmetic. No allocation here is of
     a GC-tracked object, so no collection (and no finaliser) can run in the middle,
     and nothing dropped here has a finaliser (a block's _checkout is a float or None).
   - An allocation that fails leaves the pool as it was: whatever can fail comes
     before the first change, or is undone (tests/pool/test_compiled_redteam.py).
     The give-back allocates nothing: it counts its hold time in the desk's own copy
     of the use histogram (C counts and a C sum), which the pool's fold
     (`_fold_holds_locked`, under the lock, run by every reader) adds to its own.
   - Why the fast path is kept small, its slow branches marked unlikely and the slow
     calls cold: with the same instruction count as a minimal Python pool, the
     blocks cost the client more CPU per query through first-level cache misses
     (benchmarks/cache_profile.py), so code and data touched per block matter.
   - Anything else (a busy lock, no idle connection, an expiring connection, a
     waiter, an exception, an open transaction, a check
     or reset callback, call sites...) goes to the Python `_Borrow.__enter__` or
     `__exit__`, which do the general work under the lock. Those are given to
     `set_fallbacks` when pool.py is imported.
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <time.h>

#ifdef Py_GIL_DISABLED
#error "poolwatch._hot relies on the GIL; setup.py skips it on free-threaded builds"
#endif

/* The slow paths are rare: keeping them out of the fast path's cache lines matters
   more here than their own speed (benchmarks/RESULTS.md, the profile section). */
#if defined(__GNUC__) || defined(__clang__)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)
#define COLD __attribute__((noinline, cold))
#else
#define UNLIKELY(x) (x)
#define COLD
#endif

static PyObject *fallback_enter = NULL; /* _Borrow.__enter__ */
static PyTypeObject *deque_type = NULL; /* collections.deque */
static PyTypeObject *lock_type = NULL;  /* _thread.lock */
static PyObject *fallback_exit = NULL;  /* _Borrow.__exit__ */
static PyObject *time_monotonic = NULL;

static PyObject *s_lock, *s_locked, *s_idle, *s_expire_at, *s_popleft,
    *s_out, *s_pool, *s_pgconn,
    *s_transaction_status, *s_waiting, *s_idle_put,
    *s_connection_class;

/* One per pool: the pool's containers, which it never replaces. The pool refers to
   its desk, so the desk refers to the pool only weakly and not to its dictionary:
   a cycle would keep a pool dropped without close() (its threads, its connections)
   until a full garbage collection. The blocks, which the pool does not refer to,
   hold the pool and its dictionary, as the Python blocks hold the pool. */
typedef struct {
    PyObject_HEAD
    PyObject *pool_ref; /* a weak reference to the pool */
    PyObject *conn_type; /* pool.connection_class: the only connections lent here */
    PyObject *lock;
    PyObject *idle;
    PyObject *out;
    PyObject *waiting;
    PyObject *idle_put;
    PyObject *idle_take; /* the bound idle.popleft */
    PyObject *locked; /* the bound lock.locked */
    /* The blocks ended here not yet in the pool's use histogram: their hold times
       counted in the histogram's buckets (counts[i]: times <= bounds[i], the last
       +Inf), their sum and number. */
    double *bounds;
    long long *counts;
    Py_ssize_t nbounds;
    double held_sum;
    long long nheld;
    char fast;        /* the pool's _fast_borrow, which _refresh_fast_paths copies here */
    char ran_out;     /* a take here emptied the idle list: the pool's fold sets _idle_ran_out */
    char surplus;     /* _nconns > _max_size, which resize() and the fold write here */
    long long instant; /* lendings here since the pool last added them to its _instant */
    unsigned long long drains; /* drain() adds one: it changes lent connections' _expire_at */
} Desk;

/* Every field is always set (never NULL): the setters refuse deletion. */
typedef struct {
    PyObject_HEAD
    Desk *desk;
    PyObject *pool;
    PyObject *timeout;
    PyObject *conn;
    PyObject *checkout; /* None or a float (the lending's token): nothing with a finaliser */
    /* The connection's _expire_at, read by the compiled enter, and desk->drains then:
       the exit trusts it while no drain came since. 0 when the Python enter lent. */
    double expire_at;
    unsigned long long drains;
} Borrow;

static PyTypeObject BorrowType;

/* time.monotonic(), as the same float: on Linux CPython reads CLOCK_MONOTONIC and
   converts nanoseconds to seconds this way; elsewhere (before 3.13) ask time itself. */
static int
monotonic_now(double *out)
{
#if PY_VERSION_HEX >= 0x030D0000
    PyTime_t t;
    if (PyTime_Monotonic(&t) < 0)
        return -1;
    *out = PyTime_AsSecondsDouble(t);
    return 0;
#elif defined(__linux__)
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    long long t = (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    if (t % 1000000000LL == 0)
        *out = (double)(t / 1000000000LL);
    else
        *out = (double)t / 1e9;
    return 0;
#else
    PyObject *f = PyObject_CallNoArgs(time_monotonic);
    if (f == NULL)
        return -1;
    *out = PyFloat_AsDouble(f);
    Py_DECREF(f);
    return (*out == -1.0 && PyErr_Occurred()) ? -1 : 0;
#endif
}

/* Before 3.13 a _thread.lock is this struct (Modules/_threadmodule.c), and locked()
   returns its `locked` byte. Reading the byte saves a call per block end; the layout
   is private, so PyInit__hot checks it on a lock of its own (acquired, then released)
   and, if it does not match, every block calls locked() instead. */
#if PY_VERSION_HEX < 0x030D0000
typedef struct {
    PyObject_HEAD
    void *lock_lock;
    PyObject *in_weakreflist;
    char locked;
} lock_layout;
#endif
static int lock_byte_ok = 0;

/* 1 if the pool's lock is free (see the top of the file), 0 if held, -1 on error. */
static int
lock_free(Desk *desk)
{
#if PY_VERSION_HEX < 0x030D0000
    if (lock_byte_ok)
        return ((lock_layout *)desk->lock)->locked == 0;
#endif
    PyObject *held = PyObject_CallNoArgs(desk->locked);
    if (held == NULL)
        return -1;
    int r = held == Py_False;
    Py_DECREF(held);
    return r;
}

/* 1 if conn._expire_at > now (then *expire_at is it), 0 if not, -1 on error. */
static int
alive_at(PyObject *conn, double now, double *expire_at)
{
    PyObject *value = PyObject_GetAttr(conn, s_expire_at);
    if (value == NULL)
        return -1;
    int r = PyFloat_CheckExact(value) && (*expire_at = PyFloat_AS_DOUBLE(value)) > now;
    Py_DECREF(value);
    return r;
}

static COLD PyObject *
enter_slow(Borrow *self)
{
    return PyObject_CallOneArg(fallback_enter, (PyObject *)self);
}

static PyObject *
Borrow_enter(Borrow *self, PyObject *Py_UNUSED(ignored))
{
    Desk *desk = self->desk;
    if (desk == NULL)
        return enter_slow(self);
    PyObject *idle = desk->idle;
    if (self->conn != Py_None || Py_SIZE(idle) <= 0) /* an exact deque: see Desk_new */
        return enter_slow(self); /* which raises if the block is open already */
    PyObject *result = NULL, *conn = NULL;
    int ok = lock_free(desk);
    if (UNLIKELY(ok <= 0))
        goto slow_or_error;
    /* From here to the end, no Python code runs: this is the critical section. */
    if (UNLIKELY(!desk->fast))
        goto slow;
    Py_ssize_t n = Py_SIZE(idle);
    if (UNLIKELY(n <= 0))
        goto slow;
    conn = PySequence_GetItem(idle, 0);
    if (UNLIKELY(conn == NULL))
        goto done;
    if (UNLIKELY(!Py_IS_TYPE(conn, (PyTypeObject *)desk->conn_type)))
        goto slow; /* only the class checked by _compiled runs no Python code */
    double t, expire_at;
    if (UNLIKELY(monotonic_now(&t) < 0))
        goto done;
    ok = alive_at(conn, t, &expire_at);
    if (UNLIKELY(ok <= 0))
        goto slow_or_error;
    /* What can fail (an allocation) comes before the first change to the pool, so
       that an error leaves it as it was; the stores after it replace existing
       entries, which allocates nothing. */
    PyObject *now = PyFloat_FromDouble(t);
    if (UNLIKELY(now == NULL))
        goto done;
    if (PyDict_SetItem(desk->out, conn, now) < 0) {
        Py_DECREF(now);
        goto done;
    }
    PyObject *taken = PyObject_CallNoArgs(desk->idle_take);
    if (taken == NULL) { /* not reached: the deque holds n > 0 connections */
        Py_DECREF(now);
        (void)PyDict_DelItem(desk->out, conn); /* undone; an error here replaces popleft's */
        goto done;
    }
    Py_DECREF(taken); /* the same object as conn */
    Py_SETREF(self->checkout, now); /* the old one is None or a float: no finaliser */
    if (UNLIKELY(PyObject_GenericSetAttr(conn, s_pool, self->pool) < 0))
        goto done; /* not reached: set when it became idle, so replacing it allocates nothing */
    if (n == 1)
        desk->ran_out = 1;
    desk->instant++;
    self->expire_at = expire_at;
    self->drains = desk->drains;
    Py_SETREF(self->conn, Py_NewRef(conn));
    result = Py_NewRef(conn);
    goto done;
slow_or_error:
    if (UNLIKELY(PyErr_Occurred()))
        goto done;
slow:
    result = enter_slow(self);
done:
    Py_XDECREF(conn);
    return result;
}

static COLD PyObject *
exit_slow(Borrow *self, PyObject *const *args)
{
    PyObject *call[4] = {(PyObject *)self, args[0], args[1], args[2]};
    return PyObject_Vectorcall(fallback_exit, call, 4, NULL);
}

/* One hold time into the desk's histogram: the bucket bisect_left(bounds, held)
   picks, as Histogram.observe does (bounds ascending, checked by Desk_new). */
static inline void
count_hold(Desk *desk, double held)
{
    Py_ssize_t i = 0, n = desk->nbounds;
    const double *bounds = desk->bounds;
    while (i < n && held > bounds[i])
        i++;
    desk->counts[i]++;
    desk->held_sum += held;
    desk->nheld++;
}

/* 1 if the connection has no transaction open, 0 if it has, -1 on error. */
static int
transaction_idle(PyObject *conn)
{
    PyObject *pgconn = PyObject_GetAttr(conn, s_pgconn);
    if (pgconn == NULL)
        return -1;
    PyObject *status = PyObject_GetAttr(pgconn, s_transaction_status);
    Py_DECREF(pgconn);
    if (status == NULL)
        return -1;
    long value = PyLong_AsLong(status); /* TransactionStatus is an IntEnum; IDLE is 0 */
    Py_DECREF(status);
    if (value == -1 && PyErr_Occurred())
        return -1;
    return value == 0;
}

static PyObject *
Borrow_exit(Borrow *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "__exit__ takes 3 arguments");
        return NULL;
    }
    PyObject *conn = self->conn;
    Desk *desk = self->desk;
    if (desk == NULL || args[0] != Py_None || !Py_IS_TYPE(conn, (PyTypeObject *)desk->conn_type)
        || !PyFloat_CheckExact(self->checkout))
        return exit_slow(self, args); /* not a connection this desk lent: Python decides */
    Py_INCREF(conn);
    PyObject *result = NULL;
    int ok;
    /* psycopg's pure-Python PGconn runs Python code here: so before the section. */
    ok = transaction_idle(conn);
    if (UNLIKELY(ok <= 0))
        goto slow_or_error;
    ok = lock_free(desk);
    if (UNLIKELY(ok <= 0))
        goto slow_or_error;
    /* From here to the end, no Python code runs: this is the critical section. */
    /* Its entry in _out is the lending's token while the lending lasts (borrowed). */
    PyObject *lending = PyDict_GetItemWithError(desk->out, conn);
    if (UNLIKELY(lending != self->checkout))
        goto slow_or_error; /* given back during the block: the Python exit says so */
    if (UNLIKELY(!desk->fast))
        goto slow;
    double t;
    if (UNLIKELY(monotonic_now(&t) < 0))
        goto done;
    if (UNLIKELY(t >= self->expire_at || self->drains != desk->drains))
        goto slow; /* expired during the block, or drained: the Python exit retires it */
    if (UNLIKELY(desk->surplus))
        goto slow; /* more connections than max_size: the Python exit closes one */
    if (UNLIKELY(Py_SIZE(desk->waiting) != 0))
        goto slow; /* a waiter: the hand-off runs Python code */
    /* What can fail (an allocation: the deque growing) comes first, so that an error
       leaves the pool as it was; the lending (in _out since the take) is then still
       the block's. */
    PyObject *put = PyObject_CallOneArg(desk->idle_put, conn);
    if (UNLIKELY(put == NULL))
        goto done;
    Py_DECREF(put);
    count_hold(desk, t - PyFloat_AS_DOUBLE(self->checkout));
    if (UNLIKELY(PyDict_DelItem(desk->out, conn) < 0 || PyObject_GenericSetAttr(conn, s_pool, Py_None) < 0))
        goto done; /* not reached: both entries exist (the token matched) */
    Py_SETREF(self->conn, Py_NewRef(Py_None));
    result = Py_NewRef(Py_None);
    goto done;
slow_or_error:
    if (UNLIKELY(PyErr_Occurred()))
        goto done;
slow:
    result = exit_slow(self, args);
done:
    Py_DECREF(conn);
    return result;
}

static int
Borrow_traverse(Borrow *self, visitproc visit, void *arg)
{
    Py_VISIT(self->desk);
    Py_VISIT(self->pool);
    Py_VISIT(self->timeout);
    Py_VISIT(self->conn);
    Py_VISIT(self->checkout);
    return 0;
}

/* Leaves no NULL where the methods read: a cleared block sends them to Python. */
static int
Borrow_clear(Borrow *self)
{
    Py_CLEAR(self->desk);
    Py_CLEAR(self->pool);
    Py_XSETREF(self->timeout, Py_NewRef(Py_None));
    Py_XSETREF(self->conn, Py_NewRef(Py_None));
    Py_XSETREF(self->checkout, Py_NewRef(Py_None));
    return 0;
}

static void
Borrow_dealloc(Borrow *self)
{
    PyObject_GC_UnTrack(self);
    Py_CLEAR(self->desk);
    Py_CLEAR(self->pool);
    Py_CLEAR(self->timeout);
    Py_CLEAR(self->conn);
    Py_CLEAR(self->checkout);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The fields as the Python block's slots, which its methods (the fallbacks) read and
   write. None in place of NULL: only a collection clearing a cycle leaves one. */
static PyObject *
field(PyObject *value)
{
    return Py_NewRef(value != NULL ? value : Py_None);
}

static PyObject *
Borrow_get_pool(Borrow *self, void *Py_UNUSED(closure))
{
    return field(self->pool);
}

static PyObject *
Borrow_get_timeout(Borrow *self, void *Py_UNUSED(closure))
{
    return field(self->timeout);
}

static PyObject *
Borrow_get_conn(Borrow *self, void *Py_UNUSED(closure))
{
    return field(self->conn);
}

static PyObject *
Borrow_get_checkout(Borrow *self, void *Py_UNUSED(closure))
{
    return field(self->checkout);
}

static int
refuse_deletion(PyObject *value, const char *name)
{
    if (value == NULL) {
        PyErr_Format(PyExc_AttributeError, "a connection() block's %s cannot be deleted", name);
        return -1;
    }
    return 0;
}

static int
Borrow_set_conn(Borrow *self, PyObject *value, void *Py_UNUSED(closure))
{
    if (refuse_deletion(value, "_conn") < 0)
        return -1;
    Py_SETREF(self->conn, Py_NewRef(value));
    return 0;
}

/* Only a token (a float) or None: the compiled enter drops the old value inside its
   critical section, where a finaliser must not run. */
static int
Borrow_set_checkout(Borrow *self, PyObject *value, void *Py_UNUSED(closure))
{
    if (refuse_deletion(value, "_checkout") < 0)
        return -1;
    if (value != Py_None && !PyFloat_CheckExact(value)) {
        PyErr_Format(PyExc_TypeError, "a connection() block's _checkout is a float or None, not %.100s",
                     Py_TYPE(value)->tp_name);
        return -1;
    }
    Py_SETREF(self->checkout, Py_NewRef(value));
    self->expire_at = 0.0; /* the Python enter's lending: the exit asks Python */
    return 0;
}

static PyMethodDef Borrow_methods[] = {
    {"__enter__", (PyCFunction)Borrow_enter, METH_NOARGS, "Take a connection."},
    {"__exit__", (PyCFunction)(void (*)(void))Borrow_exit, METH_FASTCALL,
     "Give the connection back."},
    {NULL},
};

static PyGetSetDef Borrow_getset[] = {
    {"_pool", (getter)Borrow_get_pool, NULL, "the pool lending the connection", NULL},
    {"_timeout", (getter)Borrow_get_timeout, NULL, "connection()'s timeout", NULL},
    {"_conn", (getter)Borrow_get_conn, (setter)Borrow_set_conn, "the connection lent", NULL},
    {"_checkout", (getter)Borrow_get_checkout, (setter)Borrow_set_checkout,
     "the lending's token", NULL},
    {NULL},
};

static PyTypeObject BorrowType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "poolwatch.pool._hot.Borrow",
    .tp_doc = "What ConnectionPool.connection() returns: a compiled context manager.",
    .tp_basicsize = sizeof(Borrow),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_traverse = (traverseproc)Borrow_traverse,
    .tp_clear = (inquiry)Borrow_clear,
    .tp_dealloc = (destructor)Borrow_dealloc,
    .tp_methods = Borrow_methods,
    .tp_getset = Borrow_getset,
};

/* The desk's pool (a new reference), or NULL with ReferenceError if it is gone. */
static PyObject *
pool_of(Desk *desk)
{
#if PY_VERSION_HEX >= 0x030D0000
    PyObject *pool;
    if (PyWeakref_GetRef(desk->pool_ref, &pool) < 0)
        return NULL;
#else
    PyObject *pool = PyWeakref_GetObject(desk->pool_ref); /* borrowed */
    if (pool == NULL)
        return NULL;
    pool = pool == Py_None ? NULL : Py_NewRef(pool);
#endif
    if (pool == NULL)
        PyErr_SetString(PyExc_ReferenceError, "the pool of this desk no longer exists");
    return pool;
}

/* desk.lend(timeout=None): a new block, as ConnectionPool.connection() returns it. */
static PyObject *
Desk_lend(Desk *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "connection() takes at most one argument (timeout)");
        return NULL;
    }
    PyObject *pool = pool_of(self);
    if (pool == NULL)
        return NULL;
    Borrow *borrow = PyObject_GC_New(Borrow, &BorrowType);
    if (borrow == NULL) {
        Py_DECREF(pool);
        return NULL;
    }
    borrow->desk = (Desk *)Py_NewRef(self);
    borrow->pool = pool;
    borrow->timeout = Py_NewRef(nargs ? args[0] : Py_None);
    borrow->conn = Py_NewRef(Py_None);
    borrow->checkout = Py_NewRef(Py_None);
    borrow->expire_at = 0.0;
    borrow->drains = 0;
    PyObject_GC_Track(borrow);
    return (PyObject *)borrow;
}

/* A new reference to pool.<name>, or NULL with an error set. */
static PyObject *
required(PyObject *pool, PyObject *name)
{
    return PyObject_GetAttr(pool, name);
}

/* Whether *put* is the deque *idle*'s own append or appendleft (C code). */
static int
is_idle_append(PyObject *put, PyObject *idle)
{
    if (!PyCFunction_Check(put) || PyCFunction_GET_SELF(put) != idle)
        return 0;
    const char *name = ((PyCFunctionObject *)put)->m_ml->ml_name;
    return strcmp(name, "append") == 0 || strcmp(name, "appendleft") == 0;
}

static PyObject *
Desk_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *pool, *bounds;
    static char *kwlist[] = {"pool", "bounds", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO!", kwlist, &pool, &PyTuple_Type, &bounds))
        return NULL;
    Desk *self = (Desk *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(bounds);
    self->bounds = PyMem_New(double, n > 0 ? n : 1);
    self->counts = PyMem_New(long long, n + 1);
    if (self->bounds == NULL || self->counts == NULL) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    self->nbounds = n;
    for (Py_ssize_t i = 0; i <= n; i++)
        self->counts[i] = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        double bound = PyFloat_AsDouble(PyTuple_GET_ITEM(bounds, i));
        if (bound == -1.0 && PyErr_Occurred()) {
            Py_DECREF(self);
            return NULL;
        }
        if (!(i == 0 || bound > self->bounds[i - 1])) { /* NaN fails this too */
            PyErr_SetString(PyExc_ValueError, "the desk's bounds must be ascending numbers");
            Py_DECREF(self);
            return NULL;
        }
        self->bounds[i] = bound;
    }
    if ((self->pool_ref = PyWeakref_NewRef(pool, NULL)) == NULL
        || (self->conn_type = required(pool, s_connection_class)) == NULL
        || (self->lock = required(pool, s_lock)) == NULL
        || (self->idle = required(pool, s_idle)) == NULL
        || (self->out = required(pool, s_out)) == NULL
        || (self->waiting = required(pool, s_waiting)) == NULL
        || (self->idle_put = required(pool, s_idle_put)) == NULL
        || (self->idle_take = PyObject_GetAttr(self->idle, s_popleft)) == NULL
        || (self->locked = PyObject_GetAttr(self->lock, s_locked)) == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    if (!PyDict_CheckExact(self->out)
        || !PyType_Check(self->conn_type) || !Py_IS_TYPE(self->idle, deque_type)
        || !Py_IS_TYPE(self->waiting, deque_type) || !Py_IS_TYPE(self->lock, lock_type)) {
        PyErr_SetString(PyExc_TypeError,
                        "the pool's _out must be a dict, _idle and _waiting "
                        "deques, _lock a threading.Lock, connection_class a class");
        Py_DECREF(self);
        return NULL;
    }
    if (!is_idle_append(self->idle_put, self->idle)) {
        /* Anything else may run Python code inside the give-back's critical section. */
        PyErr_SetString(PyExc_TypeError, "the pool's _idle_put must be its _idle's append or appendleft");
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static int
Desk_traverse(Desk *self, visitproc visit, void *arg)
{
    Py_VISIT(self->pool_ref);
    Py_VISIT(self->conn_type);
    Py_VISIT(self->lock);
    Py_VISIT(self->idle);
    Py_VISIT(self->out);
    Py_VISIT(self->waiting);
    Py_VISIT(self->idle_put);
    Py_VISIT(self->idle_take);
    Py_VISIT(self->locked);
    return 0;
}

static int
Desk_clear(Desk *self)
{
    Py_CLEAR(self->pool_ref);
    Py_CLEAR(self->conn_type);
    Py_CLEAR(self->lock);
    Py_CLEAR(self->idle);
    Py_CLEAR(self->out);
    Py_CLEAR(self->waiting);
    Py_CLEAR(self->idle_put);
    Py_CLEAR(self->idle_take);
    Py_CLEAR(self->locked);
    return 0;
}

static void
Desk_dealloc(Desk *self)
{
    PyObject_GC_UnTrack(self);
    Desk_clear(self);
    PyMem_Free(self->bounds);
    PyMem_Free(self->counts);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* desk.fold_holds(counts) -> float: add the hold times counted here to *counts* (the
   pool's use histogram's, under its lock), forget them, and return their sum; on an
   error, the list and the desk are as they were. */
static PyObject *
Desk_fold_holds(Desk *self, PyObject *counts)
{
    Py_ssize_t n = self->nbounds + 1;
    if (!PyList_CheckExact(counts) || PyList_GET_SIZE(counts) != n) {
        PyErr_Format(PyExc_TypeError, "fold_holds() takes a list of %zd counts", n);
        return NULL;
    }
    PyObject *sum = PyFloat_FromDouble(self->held_sum);
    PyObject **added = PyMem_New(PyObject *, n);
    if (sum == NULL || added == NULL) {
        Py_XDECREF(sum);
        PyMem_Free(added);
        return PyErr_NoMemory();
    }
    /* Every new count is made before any is stored: all or nothing. */
    Py_ssize_t made = 0;
    for (; made < n; made++) {
        PyObject *count = PyList_GET_ITEM(counts, made), *now = NULL;
        PyObject *more = PyLong_FromLongLong(self->counts[made]);
        if (more != NULL) {
            now = PyNumber_Add(count, more);
            Py_DECREF(more);
        }
        if (now == NULL)
            break;
        added[made] = now;
    }
    if (made < n) {
        for (Py_ssize_t i = 0; i < made; i++)
            Py_DECREF(added[i]);
        PyMem_Free(added);
        Py_DECREF(sum);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyList_SetItem(counts, i, added[i]); /* steals; drops the old int */
        self->counts[i] = 0;
    }
    PyMem_Free(added);
    self->held_sum = 0.0;
    self->nheld = 0;
    return sum;
}

/* desk.count_hold(seconds): count one hold time as a block's end does (for tests). */
static PyObject *
Desk_count_hold(Desk *self, PyObject *seconds)
{
    double held = PyFloat_AsDouble(seconds);
    if (held == -1.0 && PyErr_Occurred())
        return NULL;
    count_hold(self, held);
    Py_RETURN_NONE;
}

static PyMethodDef Desk_methods[] = {
    {"fold_holds", (PyCFunction)Desk_fold_holds, METH_O,
     "fold_holds(counts): add the hold times counted here to the list of bucket counts, "
     "forget them, and return their sum."},
    {"count_hold", (PyCFunction)Desk_count_hold, METH_O,
     "count_hold(seconds): count one hold time as a block's end does (for tests)."},
    {"lend", (PyCFunction)(void (*)(void))Desk_lend, METH_FASTCALL,
     "lend(timeout=None): a new connection() block."},
    {NULL},
};

static PyMemberDef Desk_members[] = {
    {"fast", T_BOOL, offsetof(Desk, fast), 0, "whether blocks may lend here (_fast_borrow)"},
    {"surplus", T_BOOL, offsetof(Desk, surplus), 0,
     "whether the pool has more connections than max_size (resize() and the fold set it)"},
    {"ran_out", T_BOOL, offsetof(Desk, ran_out), 0,
     "whether a take here emptied the idle list since the pool last looked"},
    {"instant", T_LONGLONG, offsetof(Desk, instant), 0,
     "lendings here not yet added to the pool's _instant"},
    {"drains", T_ULONGLONG, offsetof(Desk, drains), 0,
     "drain() adds one, so that blocks lent before it read _expire_at again"},
    {"held", T_LONGLONG, offsetof(Desk, nheld), READONLY,
     "how many hold times wait here for fold_holds()"},
    {NULL},
};

static PyTypeObject DeskType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "poolwatch.pool._hot.Desk",
    .tp_doc = "Desk(pool, bounds): the compiled blocks' references to one pool's state, and their "
               "hold times not yet folded (bounds: the use histogram's).",
    .tp_basicsize = sizeof(Desk),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = Desk_new,
    .tp_traverse = (traverseproc)Desk_traverse,
    .tp_clear = (inquiry)Desk_clear,
    .tp_dealloc = (destructor)Desk_dealloc,
    .tp_methods = Desk_methods,
    .tp_members = Desk_members,
};

static PyObject *
set_fallbacks(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *enter, *exit_;
    if (!PyArg_ParseTuple(args, "OO", &enter, &exit_))
        return NULL;
    Py_XSETREF(fallback_enter, Py_NewRef(enter));
    Py_XSETREF(fallback_exit, Py_NewRef(exit_));
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"set_fallbacks", set_fallbacks, METH_VARARGS,
     "set_fallbacks(enter, exit): the Python block methods for the general case."},
    {NULL},
};

static struct PyModuleDef hot_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "poolwatch.pool._hot",
    .m_doc = "The compiled fast path of ConnectionPool.connection() blocks (GIL builds only).",
    .m_size = -1,
    .m_methods = module_methods,
};

/* A new reference to module.name, which must be a class. */
static PyTypeObject *
type_in(const char *module, const char *name)
{
    PyObject *mod = PyImport_ImportModule(module);
    if (mod == NULL)
        return NULL;
    PyObject *type = PyObject_GetAttrString(mod, name);
    Py_DECREF(mod);
    if (type != NULL && !PyType_Check(type)) {
        Py_DECREF(type);
        PyErr_Format(PyExc_TypeError, "%s.%s is not a class", module, name);
        return NULL;
    }
    return (PyTypeObject *)type;
}

/* Sets lock_byte_ok if a fresh lock's `locked` byte follows acquire() and release(). */
static int
check_lock_layout(void)
{
#if PY_VERSION_HEX < 0x030D0000
    if (lock_type->tp_basicsize != (Py_ssize_t)sizeof(lock_layout))
        return 0;
    PyObject *thread = PyImport_ImportModule("_thread");
    if (thread == NULL)
        return -1;
    PyObject *lock = PyObject_CallMethod(thread, "allocate_lock", NULL);
    Py_DECREF(thread);
    if (lock == NULL)
        return -1;
    if (!Py_IS_TYPE(lock, lock_type)) {
        Py_DECREF(lock);
        return 0;
    }
    int ok = ((lock_layout *)lock)->locked == 0;
    PyObject *r = PyObject_CallMethod(lock, "acquire", NULL);
    if (r == NULL) {
        Py_DECREF(lock);
        return -1;
    }
    Py_DECREF(r);
    ok = ok && ((lock_layout *)lock)->locked == 1;
    r = PyObject_CallMethod(lock, "release", NULL);
    if (r == NULL) {
        Py_DECREF(lock);
        return -1;
    }
    Py_DECREF(r);
    ok = ok && ((lock_layout *)lock)->locked == 0;
    Py_DECREF(lock);
    lock_byte_ok = ok;
#endif
    return 0;
}

#define INTERN(var, text)                                                                  \
    if ((var = PyUnicode_InternFromString(text)) == NULL)                                  \
        return NULL;

PyMODINIT_FUNC
PyInit__hot(void)
{
    INTERN(s_lock, "_lock");
    INTERN(s_locked, "locked");
    INTERN(s_idle, "_idle");
    INTERN(s_expire_at, "_expire_at");
    INTERN(s_popleft, "popleft");
    INTERN(s_out, "_out");
    INTERN(s_pool, "_pool");
    INTERN(s_pgconn, "pgconn");
    INTERN(s_transaction_status, "transaction_status");
    INTERN(s_waiting, "_waiting");
    INTERN(s_idle_put, "_idle_put");
    INTERN(s_connection_class, "connection_class");
    PyObject *time = PyImport_ImportModule("time");
    if (time == NULL)
        return NULL;
    time_monotonic = PyObject_GetAttrString(time, "monotonic");
    Py_DECREF(time);
    if (time_monotonic == NULL)
        return NULL;
    if (PyType_Ready(&BorrowType) < 0 || PyType_Ready(&DeskType) < 0)
        return NULL;
    if ((deque_type = type_in("collections", "deque")) == NULL
        || (lock_type = type_in("_thread", "LockType")) == NULL
        || check_lock_layout() < 0)
        return NULL;
    PyObject *m = PyModule_Create(&hot_module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Borrow", (PyObject *)&BorrowType) < 0
        || PyModule_AddObjectRef(m, "Desk", (PyObject *)&DeskType) < 0
        || PyModule_AddObjectRef(m, "READS_LOCK_BYTE", lock_byte_ok ? Py_True : Py_False) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
