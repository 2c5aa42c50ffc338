/* PostgreSQL driver of the SQL storage (libpq's asynchronous API); the
 * storage type itself is in sqlstore.c. */
#ifndef CM_PG_H
#define CM_PG_H
#include "sql/sqlstore.h"
#endif
