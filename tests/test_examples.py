"""The service examples run for real: examples/fastapi_app.py under uvicorn
(asyncio and uvloop) and under gunicorn with two uvicorn workers (with and
without --preload), examples/aiohttp_app.py under aiohttp's runner. Each
server is a subprocess on a free port, talking to the test Redis; the tests
check the answers, that values are loaded once and then served from the
caches, and that shutdown is clean (no warning about unclosed resources or
destroyed tasks, no traceback)."""
import asyncio
import contextlib
import os
import pathlib
import signal
import subprocess
import sys
import time
from typing import Iterator, List

import pytest

from conftest import unique
from redis_servers import (  # noqa: F401  (fixtures)
    _redis_session_server,
    free_port,
    needs_redis,
    redis_server,
)

httpx = pytest.importorskip("httpx")

ROOT = pathlib.Path(__file__).resolve().parent.parent
BIN = pathlib.Path(sys.executable).parent
# what an unclean shutdown prints (asyncio, CPython, aiohttp, uvicorn)
BAD = ("Unclosed", "unclosed", "Task was destroyed", "never awaited", "ResourceWarning",
       "Traceback", "Application shutdown failed", "Exception in callback")

pytestmark = [needs_redis, pytest.mark.timeout(120)]


@contextlib.contextmanager
def serve(cmd: List[str], port: int, redis_url: str, tmp_path: pathlib.Path,
          workers: int = 1) -> Iterator["Server"]:
    """Run cmd until the block ends, then stop it with SIGTERM and check
    that it shut down cleanly."""
    env = dict(os.environ, CACHEME_REDIS_URL=redis_url, CACHEME_PREFIX=unique("example-"),
               DB_DELAY="0.2", PYTHONWARNINGS="default::ResourceWarning",
               PYTHONPATH=str(ROOT))
    err_path = tmp_path / "stderr.txt"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=err, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        server = Server(port, proc, err_path)
        server.wait_ready()
        yield server
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
        out = err_path.read_text(errors="replace")
        # uvicorn re-raises the SIGTERM it handled once shut down
        assert rc in (0, -signal.SIGTERM), out
        bad = [line for line in out.splitlines() if any(b in line for b in BAD)]
        assert not bad, out
        server.output = out
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the workers too
            proc.wait()


class Server:
    def __init__(self, port: int, proc: subprocess.Popen, err_path: pathlib.Path):
        self.base = f"http://127.0.0.1:{port}"
        self.proc = proc
        self.err_path = err_path
        self.output = ""

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited: {self.err_path.read_text(errors='replace')}")
            try:
                httpx.get(self.base + "/products/0", timeout=2)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        pytest.fail(f"server not ready: {self.err_path.read_text(errors='replace')}")

    def get(self, path: str) -> dict:
        # a connection per request, so that gunicorn spreads them over its workers
        r = httpx.get(self.base + path, timeout=10, headers={"Connection": "close"})
        r.raise_for_status()
        return r.json()

    def delete(self, path: str) -> dict:
        r = httpx.delete(self.base + path, timeout=10)
        r.raise_for_status()
        return r.json()

    def get_many(self, path: str, n: int) -> List[dict]:
        async def run() -> List[dict]:
            async with httpx.AsyncClient(timeout=10) as client:
                rs = await asyncio.gather(*(client.get(self.base + path) for _ in range(n)))
            return [r.json() for r in rs]

        return asyncio.run(run())


def check_service(server: Server, stats: bool) -> None:
    """The behaviour both examples show, on one process."""
    first = server.get("/users/1")
    assert first["table"] == "users" and first["id"] == 1
    assert server.get("/users/1") == first  # a hit: the very same read
    assert server.get("/products/7") == server.get("/products/7")  # Memoize

    # concurrent requests for one key: one database read for all of them
    many = server.get_many("/users/2", 20)
    assert all(m == many[0] for m in many)

    assert server.delete("/users/1") == {"invalidated": 1}
    again = server.get("/users/1")
    assert again["read_at"] > first["read_at"]  # read from the database again
    if stats:
        s = server.get("/stats")
        assert s["loads"] == 3  # user 1 twice (invalidated once), user 2 once
        assert s["storages"]["local"]["hits"] >= 1
        assert s["storages"]["redis"]["errors"] == 0


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_fastapi_under_uvicorn(loop, redis_server, tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    port = free_port()
    cmd = [str(BIN / "python"), "-m", "uvicorn", "examples.fastapi_app:app",
           "--host", "127.0.0.1", "--port", str(port), "--loop", loop]
    with serve(cmd, port, redis_server.url, tmp_path) as server:
        check_service(server, stats=True)
    assert server.output.count("Application shutdown complete") == 1


@pytest.mark.parametrize("preload", [False, True], ids=["fork", "preload"])
def test_fastapi_under_gunicorn(preload, redis_server, tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    pytest.importorskip("gunicorn")
    port = free_port()
    cmd = [str(BIN / "gunicorn"), "examples.fastapi_app:app", "-k", "uvicorn.workers.UvicornWorker",
           "-w", "2", "-b", f"127.0.0.1:{port}", "--graceful-timeout", "10",
           "--no-control-socket"]  # its default path in $HOME is shared by every run
    if preload:
        cmd.append("--preload")
    with serve(cmd, port, redis_server.url, tmp_path) as server:
        # whichever worker answers, user 3 is read from the database once:
        # the other worker finds it in Redis
        answers = [server.get("/users/3") for _ in range(12)]
        assert all(a == answers[0] for a in answers), answers
        pids = {server.get("/stats")["pid"] for _ in range(12)}
        assert 1 <= len(pids) <= 2
        # invalidate reaches Redis and the answering worker's local cache;
        # once both workers' local copies are gone, the next read loads anew
        server.delete("/users/3")
        server.delete("/users/3")
    # each worker ran its lifespan shutdown (cacheme.close()) and exited cleanly
    assert server.output.count("Application shutdown complete") == 2, server.output


def test_aiohttp_runner(redis_server, tmp_path):
    pytest.importorskip("aiohttp")
    port = free_port()
    cmd = [str(BIN / "python"), "examples/aiohttp_app.py", "--port", str(port)]
    with serve(cmd, port, redis_server.url, tmp_path) as server:
        check_service(server, stats=False)
        check_metrics(server)


def check_metrics(server: Server) -> None:
    """The example's /metrics, scraped and parsed as Prometheus would."""
    parser = pytest.importorskip("prometheus_client.parser")
    r = httpx.get(server.base + "/metrics", timeout=10)
    r.raise_for_status()
    got = {}
    for family in parser.text_string_to_metric_families(r.text):
        for s in family.samples:
            got[(s.name, tuple(sorted(s.labels.items())))] = s.value
    # what check_service did: user 1 loaded twice (invalidated once), user 2 once
    assert got[("cacheme_loads_total", (("node", "UserNode"), ("result", "success")))] == 3
    assert got[("cacheme_requests_total", (("node", "UserNode"), ("result", "hit")))] >= 1
    assert got[("cacheme_load_duration_seconds_count", (("node", "UserNode"),))] == 3
    # DB_DELAY is 0.2 s: no load of a user fits under 0.1 s
    assert got[("cacheme_load_duration_seconds_bucket",
                (("le", "0.1"), ("node", "UserNode")))] == 0
    assert got[("cacheme_local_entries", (("storage", "local"),))] >= 1
    assert got[("cacheme_storage_operations_total",
                (("op", "get"), ("result", "error"), ("storage", "redis")))] == 0
    assert got[("cacheme_in_flight", ())] == 0
