"""Temporary PostgreSQL and MariaDB servers for tests/test_sql.py.

Each server runs from a fresh data directory in a temp dir on a free local
port, can be stopped and restarted on the same port (the fault tests), and is
removed at the end; no test depends on the machine's own servers or on
state left by an earlier run. As root (CI), PostgreSQL runs as the
``postgres`` user (it refuses root) and MariaDB with ``--user=root``.
"""
import os
import shutil
import socket
import subprocess
import tempfile
import time
from typing import List, Optional

PG_BIN_DIRS = ["/usr/lib/postgresql/17/bin", "/usr/lib/postgresql/16/bin",
               "/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/14/bin"]


def server_env() -> dict:
    """The environment of server processes: without the sanitizer preload of
    an ASan test run (the servers are not ours to check)."""
    env = dict(os.environ)
    for k in ("LD_PRELOAD", "ASAN_OPTIONS", "PYTHONMALLOC", "PYTHONPATH"):
        env.pop(k, None)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not listen on {port} within {timeout}s")


def pg_bin() -> Optional[str]:
    for d in PG_BIN_DIRS:
        if os.path.exists(os.path.join(d, "postgres")):
            return d
    found = shutil.which("pg_ctl")
    return os.path.dirname(found) if found else None


class PgServer:
    def __init__(self) -> None:
        self.bin = pg_bin()
        if self.bin is None:
            raise RuntimeError("PostgreSQL server binaries not found (Debian: postgresql)")
        self.dir = tempfile.mkdtemp(prefix="cacheme-pg-")
        self.data = os.path.join(self.dir, "data")
        self.port = free_port()
        self.proc: Optional[subprocess.Popen] = None
        self.as_root = os.geteuid() == 0
        if self.as_root:
            shutil.chown(self.dir, "postgres", "postgres")
            os.chmod(self.dir, 0o700)
        out = subprocess.run(
            self._cmd([os.path.join(self.bin, "initdb"), "-D", self.data, "-A", "trust",
                       "-U", "postgres", "-E", "UTF8", "--no-sync"]),
            capture_output=True, text=True, env=server_env())
        if out.returncode != 0:
            raise RuntimeError(f"initdb failed: {out.stderr}")

    def _cmd(self, args: List[str]) -> List[str]:
        return ["runuser", "-u", "postgres", "--", *args] if self.as_root else args

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self._cmd([os.path.join(self.bin, "postgres"), "-D", self.data, "-p", str(self.port),
                       "-k", self.dir, "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                       "-c", "max_connections=300", "-c", "full_page_writes=off"]),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=server_env())
        _wait_port(self.port, self.proc)
        # accepting connections (not just listening: recovery after a restart)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            r = subprocess.run([os.path.join(self.bin, "pg_isready"), "-h", "127.0.0.1", "-p",
                                str(self.port)], capture_output=True, env=server_env())
            if r.returncode == 0:
                return
            time.sleep(0.05)
        raise RuntimeError("postgres not ready")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # as root the child is runuser: signal the group's postgres via pg_ctl
            subprocess.run(self._cmd([os.path.join(self.bin, "pg_ctl"), "-D", self.data, "-m",
                                      "fast", "-w", "stop"]), capture_output=True,
                           env=server_env())
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class MariaServer:
    def __init__(self) -> None:
        self.mysqld = shutil.which("mariadbd") or shutil.which("mysqld") or (
            "/usr/sbin/mariadbd" if os.path.exists("/usr/sbin/mariadbd") else None)
        install = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
        if self.mysqld is None or install is None:
            raise RuntimeError("MariaDB server not found (Debian: mariadb-server)")
        self.dir = tempfile.mkdtemp(prefix="cacheme-maria-")
        self.data = os.path.join(self.dir, "data")
        self.sock = os.path.join(self.dir, "mysqld.sock")
        self.port = free_port()
        self.proc: Optional[subprocess.Popen] = None
        # a tmpdir of its own: servers bootstrapped at the same time by other
        # test runs sharing /tmp collided there ("Could not remove temporary
        # table '/tmp/#sql-temptable-...'")
        args = [install, "--no-defaults", f"--datadir={self.data}", "--auth-root-authentication-method=normal",
                "--skip-test-db", f"--tmpdir={self.dir}"]
        if os.geteuid() == 0:
            args.append("--user=root")
        out = subprocess.run(args, capture_output=True, text=True, env=server_env())
        if out.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed: {out.stderr}")

    @property
    def url(self) -> str:
        return f"mysql://root@127.0.0.1:{self.port}/test"

    def start(self) -> None:
        args = [self.mysqld, "--no-defaults", f"--datadir={self.data}", f"--port={self.port}",
                f"--socket={self.sock}", "--bind-address=127.0.0.1", "--skip-grant-tables",
                "--innodb-flush-log-at-trx-commit=0", "--max-connections=300",
                "--character-set-server=utf8mb4", "--collation-server=utf8mb4_general_ci",
                f"--pid-file={os.path.join(self.dir, 'mysqld.pid')}", f"--tmpdir={self.dir}",
                f"--log-error={os.path.join(self.dir, 'error.log')}"]
        if os.geteuid() == 0:
            args.append("--user=root")
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     env=server_env())
        _wait_port(self.port, self.proc)
        os.makedirs(os.path.join(self.data, "test"), exist_ok=True)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class ModuleServers:
    """A test module's PostgreSQL/MariaDB servers, each started on first use
    (a start that fails skips the tests that need it) and stopped by
    cleanup() at the module's end."""

    def __init__(self) -> None:
        self._servers: dict = {}

    def url(self, backend: str) -> str:
        import pytest

        if backend not in self._servers:
            try:
                srv = PgServer() if backend == "postgresql" else MariaServer()
                srv.start()
            except Exception as e:  # pragma: no cover - depends on the machine
                srv = e
            self._servers[backend] = srv
        srv = self._servers[backend]
        if isinstance(srv, Exception):
            pytest.skip(f"{backend} server unavailable: {srv}")
        return srv.url

    def cleanup(self) -> None:
        for srv in self._servers.values():
            if not isinstance(srv, Exception):
                srv.cleanup()
        self._servers.clear()
