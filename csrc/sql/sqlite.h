/* SQLite driver of the SQL storage (libsqlite3, statements run inline);
 * the storage type itself is in sqlstore.c. */
#ifndef CM_SQLITE_H
#define CM_SQLITE_H
#include "sql/sqlstore.h"
#endif
