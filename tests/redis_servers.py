"""Real redis-server processes for the tests: each on a free local port in its
own temp dir, with no persistence, cleaned up afterwards. Nothing here uses
the machine's own Redis service or anything left by an earlier run.

Fixtures (import them into a test module):
  redis_server   one server for the session; flushed before each test
  redis_cluster  three masters in cluster mode for the session
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import List, Optional

import pytest

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")

needs_redis = pytest.mark.skipif(
    REDIS_SERVER is None or REDIS_CLI is None,
    reason="redis-server/redis-cli not installed (Debian: apt-get install redis-server redis-tools)",
)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(cluster_bus: bool = False) -> int:
    """A port free now (and port + 10000 too, for a cluster node's bus)."""
    for _ in range(1000):
        port = random.randint(20000, 29999)
        if _port_free(port) and (not cluster_bus or _port_free(port + 10000)):
            return port
    raise RuntimeError("no free port found")


def command(port: int, *args: str, host: str = "127.0.0.1", password: Optional[str] = None) -> str:
    """A blocking redis-cli call (setup only; the tests use our client)."""
    argv = [REDIS_CLI, "-h", host, "-p", str(port)]
    if password:
        argv += ["--no-auth-warning", "-a", password]
    r = subprocess.run(argv + list(args), capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError(f"redis-cli {' '.join(args)}: {r.stderr or r.stdout}")
    return r.stdout.strip()


class RedisServer:
    def __init__(self, *, cluster: bool = False, password: Optional[str] = None, extra=()):
        self.cluster = cluster
        self.password = password
        self.extra = list(extra)
        self.dir = tempfile.mkdtemp(prefix="cacheme-redis-")
        self.port = free_port(cluster_bus=cluster)
        self.socket = os.path.join(self.dir, "redis.sock")
        self.proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}"

    def start(self) -> "RedisServer":
        argv = [
            REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", self.dir,
            "--unixsocket", self.socket, "--unixsocketperm", "700",
            "--daemonize", "no", "--loglevel", "warning", "--logfile", "redis.log",
        ]
        if self.password:
            argv += ["--requirepass", self.password]
        if self.cluster:
            argv += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                     "--cluster-node-timeout", "2000"]
        argv += self.extra
        self.proc = subprocess.Popen(argv, cwd=self.dir, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                log = open(os.path.join(self.dir, "redis.log")).read() if os.path.exists(
                    os.path.join(self.dir, "redis.log")) else ""
                raise RuntimeError(f"redis-server exited: {log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    data = s.recv(100)
                    # ours, not another run's server that took the port
                    # first (ours then exits: the poll above raises)
                    if data.startswith((b"+PONG", b"-NOAUTH")) and self._ours():
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def _ours(self) -> bool:
        try:
            info = self.cli("INFO", "server")
        except (RuntimeError, subprocess.TimeoutExpired):
            return False
        return self.proc is not None and f"process_id:{self.proc.pid}" in info

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        self.stop()
        self.start()

    def cli(self, *args: str) -> str:
        return command(self.port, *args, password=self.password)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()


class RedisCluster:
    """Three masters, slots spread by redis-cli --cluster create."""

    def __init__(self, masters: int = 3, extra=()):
        self.nodes: List[RedisServer] = [
            RedisServer(cluster=True, extra=extra) for _ in range(masters)]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self) -> "RedisCluster":
        for n in self.nodes:
            n.start()
        addrs = [f"127.0.0.1:{n.port}" for n in self.nodes]
        r = subprocess.run(
            [REDIS_CLI, "--cluster", "create", *addrs, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=60,
        )
        if r.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {r.stdout}\n{r.stderr}")
        self.wait_ok()
        return self

    def wait_ok(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            infos = [n.cli("CLUSTER", "INFO") for n in self.nodes]
            if all("cluster_state:ok" in i for i in infos):
                # every node also agrees on the slot owners
                slots = {n.cli("CLUSTER", "SLOTS") for n in self.nodes}
                if len(slots) == 1:
                    return
            time.sleep(0.1)
        raise RuntimeError("redis cluster did not become ok")

    def cleanup(self) -> None:
        for n in self.nodes:
            n.cleanup()

    def __enter__(self) -> "RedisCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()


@pytest.fixture(scope="session")
def _redis_session_server():
    if REDIS_SERVER is None:
        pytest.skip("redis-server not installed")
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_server(_redis_session_server):
    _redis_session_server.cli("FLUSHALL")
    _redis_session_server.cli("CONFIG", "RESETSTAT")
    return _redis_session_server


@pytest.fixture(scope="session")
def redis_cluster():
    if REDIS_SERVER is None or REDIS_CLI is None:
        pytest.skip("redis-server/redis-cli not installed")
    with RedisCluster() as cluster:
        yield cluster


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def commandstats(server: RedisServer) -> dict:
    """{command: calls} from INFO commandstats."""
    out = {}
    for line in server.cli("INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_"):
            name, rest = line[len("cmdstat_"):].split(":", 1)
            fields = dict(kv.split("=") for kv in rest.split(","))
            out[name] = int(fields["calls"])
    return out
