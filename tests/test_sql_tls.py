"""TLS options of the SQL storages: PostgreSQL's sslmode (in the URL, for
libpq as is) and MySQL/MariaDB's ssl_mode (on Connector/C's options),
against servers without TLS (the machine's) and with it (temporary ones
started here with throwaway certificates)."""
import os
import shutil
import stat
import subprocess
import time

import pytest

from cacheme import _core
from cacheme.storages.mysql import MySQLStorage, parse_url
from cacheme.storages.postgres import PostgresStorage
from cacheme.storages.sqldb import SQLConnectionError
from conftest import unique
from sql_servers import MariaServer, PgServer
from tls_certs import OPENSSL, Certs, certs  # noqa: F401 (fixture)

PG_PLAIN = "postgresql://postgres@127.0.0.1:5432/test"
MY_PLAIN = "mysql://root@127.0.0.1:3306/test"
MY_PLAIN_CLI = ("-h127.0.0.1", "-P3306")
PSQL = shutil.which("psql")
MARIADB = shutil.which("mariadb") or shutil.which("mysql")

needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="the openssl CLI makes certificates")


def _available(tp):
    return tp.__new__(tp).library_available


needs_pq = pytest.mark.skipif(not _available(_core.PgClient), reason="built without libpq")
needs_maria = pytest.mark.skipif(not _available(_core.MySQLClient),
                                 reason="built without MariaDB Connector/C")


def _cli(argv):
    """A server's answer through its own CLI (execute() returns no rows)."""
    # not under the sanitizer a test run may preload (make test-asan)
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    r = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env)
    if r.returncode != 0:
        pytest.skip(f"{argv[0]} failed: {r.stderr}")
    return r.stdout.strip()


def _psql(url, sql):
    if PSQL is None:
        pytest.skip("psql not installed")
    url += ("&" if "?" in url else "?") + "sslmode=disable&connect_timeout=10"
    return _cli([PSQL, "-X", "-w", url, "-Atc", sql])


def _mariadb(sql, *where):
    if MARIADB is None:
        pytest.skip("the mariadb client is not installed")
    return _cli([MARIADB, "--skip-ssl", "-uroot", "-N", "-B", *where, "-e", sql])


async def _drop(storage):
    """The machine's servers keep no table of ours."""
    await storage.execute(f"DROP TABLE IF EXISTS {storage.table}")
    await storage.close()


async def _plain_or_skip(storage):
    try:
        await storage.connect()
    except SQLConnectionError as e:
        if "SSL" in str(e) or "TLS" in str(e):
            raise
        pytest.skip(f"the machine's server is not reachable: {e}")


# ---------------------------------------------------------------- PostgreSQL


@needs_pq
async def test_pg_sslmode_require_without_server_ssl_is_a_clear_error():
    st = PostgresStorage(PG_PLAIN + "?sslmode=disable", table=unique("cm_tls_pg"),
                         create_table=True, connect_timeout=5)
    await _plain_or_skip(st)
    await _drop(st)
    if _psql(PG_PLAIN, "SHOW ssl") == "on":
        pytest.skip("the machine's PostgreSQL has SSL on")
    st = PostgresStorage(PG_PLAIN + "?sslmode=require", table=unique("cm_tls_pg"),
                         connect_timeout=5)
    t0 = time.monotonic()
    with pytest.raises(SQLConnectionError, match="SSL"):
        await st.connect()
    assert time.monotonic() - t0 < 5
    await st.close()


@needs_pq
@pytest.mark.parametrize("mode", ["disable", "prefer", "allow"])
async def test_pg_sslmode_without_ssl_works(mode):
    st = PostgresStorage(f"{PG_PLAIN}?sslmode={mode}", table=unique("cm_tls_pg"),
                         create_table=True, connect_timeout=5)
    await _plain_or_skip(st)
    await st.execute("SELECT 1")
    await _drop(st)


class SslPgServer(PgServer):
    """A temporary PostgreSQL with ssl = on (its key the server user's, 0600)."""

    def __init__(self, certs: Certs):
        super().__init__()
        for src, name in ((certs.server, "server.crt"), (certs.server_key, "server.key")):
            dst = os.path.join(self.data, name)
            shutil.copy(src, dst)
            os.chmod(dst, stat.S_IRUSR | stat.S_IWUSR)
            if self.as_root:
                shutil.chown(dst, "postgres", "postgres")
        with open(os.path.join(self.data, "postgresql.auto.conf"), "a") as f:
            f.write("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n")


@pytest.fixture(scope="module")
def ssl_pg(certs):
    if not _available(_core.PgClient):
        pytest.skip("built without libpq")
    try:
        srv = SslPgServer(certs)
        srv.start()
    except Exception as e:  # pragma: no cover - depends on the machine
        pytest.skip(f"no PostgreSQL server to start: {e}")
    yield srv
    srv.cleanup()


@needs_openssl
async def test_pg_sslmode_against_an_ssl_server(ssl_pg, certs):
    base = ssl_pg.url
    count = "SELECT count(*) FROM pg_stat_ssl WHERE ssl"
    assert _psql(base, count) == "0"
    st = PostgresStorage(base + "?sslmode=require", table=unique("cm_tls_pg"), create_table=True,
                         pool_size=1)
    await st.connect()
    assert _psql(base, count) == "1"  # ours, still open
    await st.close()
    st = PostgresStorage(f"{base}?sslmode=verify-full&sslrootcert={certs.ca}",
                         table=unique("cm_tls_pg"), create_table=True)
    await st.connect()
    await st.close()
    st = PostgresStorage(f"{base}?sslmode=verify-full&sslrootcert={certs.other_ca}",
                         table=unique("cm_tls_pg"), connect_timeout=5)
    with pytest.raises(SQLConnectionError, match="certificate"):
        await st.connect()
    await st.close()


# ---------------------------------------------------------------- MySQL / MariaDB


def test_mysql_ssl_mode_options():
    assert parse_url("mysql://u@h/db?ssl-mode=required&ssl_ca=/ca.pem") == {
        "host": "h", "port": 3306, "user": "u", "db": "db", "ssl_mode": "REQUIRED",
        "ssl_ca": "/ca.pem"}
    with pytest.raises(ValueError, match="ssl_mode must be one of"):
        parse_url("mysql://h/db?ssl_mode=sometimes")
    with pytest.raises(ValueError, match="ssl_mode must be one of"):
        MySQLStorage("mysql://h/db", table="t", ssl_mode="always")


def _ssl_accepts(*where) -> int:
    """TLS handshakes the server has accepted."""
    return int(_mariadb("SHOW GLOBAL STATUS LIKE 'Ssl_accepts'", *where).split()[-1])


@needs_maria
async def test_mysql_ssl_mode_required_without_server_tls_is_a_clear_error():
    st = MySQLStorage(MY_PLAIN, table=unique("cm_tls_my"), create_table=True,
                      ssl_mode="DISABLED", connect_timeout=5)
    await _plain_or_skip(st)
    await _drop(st)
    if _mariadb("SHOW VARIABLES LIKE 'have_ssl'", *MY_PLAIN_CLI).split()[-1] == "YES":
        pytest.skip("the machine's MariaDB has TLS on")
    for mode in ("REQUIRED", "VERIFY_CA", "VERIFY_IDENTITY"):
        st = MySQLStorage(MY_PLAIN, table=unique("cm_tls_my"), ssl_mode=mode, connect_timeout=5)
        t0 = time.monotonic()
        with pytest.raises(SQLConnectionError, match="TLS/SSL"):
            await st.connect()
        assert time.monotonic() - t0 < 5
        await st.close()
    # PREFERRED (the default) connects without
    st = MySQLStorage(MY_PLAIN + "?ssl-mode=preferred", table=unique("cm_tls_my"),
                      create_table=True, connect_timeout=5)
    await st.connect()
    await _drop(st)


class TlsMariaServer(MariaServer):
    """A temporary MariaDB with TLS: mariadbd started through a wrapper
    that adds the --ssl-* options (MariaServer starts it with
    --no-defaults)."""

    def __init__(self, certs: Certs):
        super().__init__()
        wrapper = os.path.join(self.dir, "mariadbd-tls")
        with open(wrapper, "w") as f:
            f.write(f'#!/bin/sh\nexec "{self.mysqld}" "$@" --ssl-cert="{certs.server}" '
                    f'--ssl-key="{certs.server_key}" --ssl-ca="{certs.ca}"\n')
        os.chmod(wrapper, 0o755)
        self.mysqld = wrapper


@pytest.fixture(scope="module")
def tls_maria(certs):
    if not _available(_core.MySQLClient):
        pytest.skip("built without MariaDB Connector/C")
    try:
        srv = TlsMariaServer(certs)
        srv.start()
    except Exception as e:  # pragma: no cover - depends on the machine
        pytest.skip(f"no MariaDB server to start: {e}")
    yield srv
    srv.cleanup()


@needs_openssl
async def test_mysql_ssl_mode_against_a_tls_server(tls_maria, certs):
    url = tls_maria.url
    where = ("-S", tls_maria.sock)
    before = _ssl_accepts(*where)
    st = MySQLStorage(url, table=unique("cm_tls_my"), create_table=True, ssl_mode="REQUIRED")
    await st.connect()
    after = _ssl_accepts(*where)
    assert after > before
    await st.close()
    st = MySQLStorage(url, table=unique("cm_tls_my"), create_table=True, ssl_mode="DISABLED")
    await st.connect()
    assert _ssl_accepts(*where) == after
    await st.close()
    st = MySQLStorage(f"{url}?ssl-mode=VERIFY_IDENTITY&ssl_ca={certs.ca}",
                      table=unique("cm_tls_my"), create_table=True)
    await st.connect()
    assert _ssl_accepts(*where) > after
    await st.close()
    st = MySQLStorage(url, table=unique("cm_tls_my"), ssl_mode="VERIFY_CA",
                      ssl_ca=certs.other_ca, connect_timeout=5)
    with pytest.raises(SQLConnectionError, match="TLS/SSL|certificate|verif"):
        await st.connect()
    await st.close()
