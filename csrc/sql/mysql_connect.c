/* Connecting a MySQL/MariaDB connection: a host name looked up off the
 * loop thread (resolve.h), then each address tried in turn on a new
 * Connector/C handle, as Connector/C itself would; and closing one without
 * blocking on a dead server. */
#include "sql/mysql_conn.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "loop/resolve.h"

#ifdef CM_HAVE_MARIADB

/* Close c's Connector/C handle, if any. Its closing calls block, with no
 * timeout, GIL held: mysql_stmt_close reads the rest of an unread result
 * (forever if the server is hung), mysql_close writes COM_QUIT. So the socket
 * is shut down first, and any read or write there fails at once. */
static void my_close_handle(CmSqlConnObject *c)
{
    MYSQL *m = c->h;
    if (m == NULL)
        return;
    my_socket fd = mysql_get_socket(m);
    if ((int)fd >= 0)
        shutdown(fd, SHUT_RDWR);
    mysql_close(m);
    c->h = NULL;
}

int cm_mysql_conn_traverse(CmSqlConnObject *c, visitproc visit, void *arg)
{
    MyConn *mc = c->aux;
    if (mc != NULL)
        Py_VISIT(mc->addrs);
    return 0;
}

void cm_mysql_close(CmSqlConnObject *c)
{
    MyConn *mc = c->aux;
    /* the connection before the statements: it detaches them, and closing
     * a detached statement only frees memory */
    my_close_handle(c);
    if (mc != NULL)
        Py_CLEAR(mc->addrs);
    if (mc != NULL) {
        for (int i = 0; i < S_COUNT; i++)
            if (mc->stmt[i] != NULL)
                mysql_stmt_close(mc->stmt[i]);
        if (mc->adhoc != NULL)
            mysql_stmt_close(mc->adhoc);
        if (mc->res != NULL)
            mysql_free_result(mc->res);
        cm_mysql_free_params(mc);
        free(mc->sql);
        free(mc);
        c->aux = NULL;
    }
}

/* A string option in *out (NULL if absent); -1 with ValueError if it cannot
 * be encoded (a lone surrogate): connecting without it would be wrong. */
static int opt_str(CmSqlStorageObject *s, const char *name, const char **out)
{
    PyObject *o = PyDict_GetItemString(s->options, name); // borrowed
    *out = NULL;
    if (o == NULL || o == Py_None || !PyUnicode_Check(o))
        return 0;
    if ((*out = PyUnicode_AsUTF8(o)) == NULL) {
        PyErr_Format(PyExc_ValueError, "mysql: option '%s' cannot be encoded as UTF-8", name);
        return -1;
    }
    return 0;
}

static int my_handle(CmSqlConnObject *c);
static int my_connect(CmSqlConnObject *c, const char *host);

int cm_mysql_try_next(CmSqlConnObject *c)
{
    MyConn *mc = c->aux;
    if (mc == NULL || mc->addrs == NULL || mc->next_addr >= PyList_GET_SIZE(mc->addrs))
        return 0;
    PyObject *ip_o = PyList_GET_ITEM(mc->addrs, mc->next_addr++); // borrowed
    cm_sql_conn_unwatch(c);
    my_close_handle(c);
    cm_sql_conn_set_fd(c, -1);
    const char *ip = PyUnicode_AsUTF8(ip_o);
    if (ip == NULL || my_handle(c) < 0 || my_connect(c, ip) < 0)
        cm_sql_conn_fail_lookup(c, 1);
    return 1;
}

/* Start connecting to host (an address, "localhost", or NULL) with the
 * storage's options. -1 with an exception. */
static int my_connect(CmSqlConnObject *c, const char *host)
{
    CmSqlStorageObject *s = c->storage; // borrowed
    MyConn *mc = c->aux;
    MYSQL *m = c->h;
    PyObject *port_o = PyDict_GetItemString(s->options, "port"); // borrowed
    unsigned port = port_o ? (unsigned)PyLong_AsUnsignedLong(port_o) : 3306;
    if (PyErr_Occurred())
        return -1;
    const char *user, *password, *db, *unix_socket;
    if (opt_str(s, "user", &user) < 0 || opt_str(s, "password", &password) < 0 ||
        opt_str(s, "db", &db) < 0 || opt_str(s, "unix_socket", &unix_socket) < 0)
        return -1;
    c->phase = PH_CONNECT;
    int status = mysql_real_connect_start(&mc->mret, m, host, user, password, db, port, unix_socket,
                                          CLIENT_FOUND_ROWS);
    if (status == 0 && mc->mret == NULL) {
        if (cm_mysql_try_next(c))
            return 0;
        PyErr_Format(s->st->sql.SQLConnectionError, "mysql: %s", mysql_error(m));
        return -1;
    }
    cm_sql_conn_set_fd(c, (int)mysql_get_socket(m));
    cm_mysql_after(c, status);
    return 0;
}

int cm_mysql_resolved(CmSqlConnObject *c, PyObject *addrs)
{
    MyConn *mc = c->aux;
    if (mc == NULL || PyList_GET_SIZE(addrs) != 1) {
        PyErr_SetString(PyExc_TypeError, "resolve: a list of one list expected");
        return -1;
    }
    PyObject *ips = PyList_GET_ITEM(addrs, 0); // borrowed; not empty (lookup.c)
    Py_XSETREF(mc->addrs, Py_NewRef(ips));
    mc->next_addr = 1;
    const char *ip = PyUnicode_AsUTF8(PyList_GET_ITEM(ips, 0));
    return ip == NULL ? -1 : my_connect(c, ip);
}

/* TLS: ssl_mode as MySQL's clients name it (the storage checked the value,
 * upper case) on Connector/C's options. DISABLED and PREFERRED ask for
 * nothing more (Connector/C 3.3 speaks TLS only when asked; a CA or client
 * certificate given makes it try); REQUIRED enforces TLS without
 * verification; VERIFY_CA and VERIFY_IDENTITY also verify the server's
 * certificate, which Connector/C checks with its host name. -1 with an
 * exception. */
static int my_tls_options(CmSqlStorageObject *s, MYSQL *m)
{
    const char *mode, *ca, *capath, *cert, *key;
    if (opt_str(s, "ssl_mode", &mode) < 0 || opt_str(s, "ssl_ca", &ca) < 0 ||
        opt_str(s, "ssl_capath", &capath) < 0 || opt_str(s, "ssl_cert", &cert) < 0 ||
        opt_str(s, "ssl_key", &key) < 0)
        return -1;
    if (mode != NULL && strcmp(mode, "DISABLED") == 0)
        return 0;
    const struct {
        enum mysql_option opt;
        const char *v;
    } files[] = {{MYSQL_OPT_SSL_CA, ca},
                 {MYSQL_OPT_SSL_CAPATH, capath},
                 {MYSQL_OPT_SSL_CERT, cert},
                 {MYSQL_OPT_SSL_KEY, key}};
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++)
        if (files[i].v != NULL)
            mysql_options(m, files[i].opt, files[i].v);
    if (mode == NULL || strcmp(mode, "PREFERRED") == 0)
        return 0;
    my_bool yes = 1;
    my_bool verify = strcmp(mode, "VERIFY_CA") == 0 || strcmp(mode, "VERIFY_IDENTITY") == 0;
    mysql_options(m, MYSQL_OPT_SSL_ENFORCE, &yes);
    mysql_options(m, MYSQL_OPT_SSL_VERIFY_SERVER_CERT, &verify);
    return 0;
}

int cm_mysql_tls_refused(CmSqlConnObject *c)
{
    const char *mode;
    if (opt_str(c->storage, "ssl_mode", &mode) < 0) {
        PyErr_Clear();
        mode = NULL;
    }
    if (mode == NULL || strcmp(mode, "DISABLED") == 0 || strcmp(mode, "PREFERRED") == 0 ||
        mysql_get_ssl_cipher((MYSQL *)c->h) != NULL)
        return 0;
    char buf[160];
    snprintf(buf, sizeof(buf), "mysql: ssl_mode=%s, but the server does not support TLS/SSL", mode);
    cm_sql_conn_fail(c, c->storage->st->sql.SQLConnectionError, buf);
    return 1;
}

/* A new Connector/C handle with the storage's options, in c->h. -1 with an
 * exception. */
static int my_handle(CmSqlConnObject *c)
{
    CmSqlStorageObject *s = c->storage; // borrowed
    MYSQL *m = mysql_init(NULL);
    if (m == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    c->h = m;
    unsigned timeout = (unsigned)(s->connect_timeout + 1);
    /* a backstop: our own deadlines fail a request first, but no blocking
     * call of the library can then wait forever */
    unsigned io_timeout = (unsigned)(s->timeout + 1);
    mysql_options(m, MYSQL_OPT_NONBLOCK, 0);
    mysql_options(m, MYSQL_OPT_CONNECT_TIMEOUT, &timeout);
    mysql_options(m, MYSQL_OPT_READ_TIMEOUT, &io_timeout);
    mysql_options(m, MYSQL_OPT_WRITE_TIMEOUT, &io_timeout);
    mysql_options(m, MYSQL_SET_CHARSET_NAME, "utf8mb4");
    return my_tls_options(s, m);
}

int cm_mysql_open(CmSqlConnObject *c)
{
    CmSqlStorageObject *s = c->storage; // borrowed
    MyConn *mc = calloc(1, sizeof(*mc));
    if (mc == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    c->aux = mc;
    if (my_handle(c) < 0)
        return -1;
    const char *host;
    if (opt_str(s, "host", &host) < 0)
        return -1;
    /* a host name is looked up off the loop thread (resolve.h), then
     * connected to by address, one after the other as Connector/C would
     * (which calls getaddrinfo in mysql_real_connect_start). "localhost"
     * is the unix socket. */
    if (cm_resolve_needed(host) && strcmp(host, "localhost") != 0) {
        PyObject *hosts = Py_BuildValue("[s]", host);
        int rc = hosts ? cm_sql_conn_lookup(c, hosts) : -1; /* then cm_mysql_resolved */
        Py_XDECREF(hosts);
        if (rc < 0)
            return -1;
        c->phase = PH_RESOLVE;
        return 0;
    }
    return my_connect(c, host);
}

#endif /* CM_HAVE_MARIADB */
