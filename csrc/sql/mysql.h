/* MySQL/MariaDB driver of the SQL storage (MariaDB Connector/C's
 * non-blocking API); the storage type itself is in sqlstore.c. */
#ifndef CM_MYSQL_H
#define CM_MYSQL_H
#include "sql/sqlstore.h"
#endif
