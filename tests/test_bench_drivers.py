"""The expiry and fleet benchmark drivers (benchmarks/run_expiry.py,
run_fleet.py) on a small scale, ours only: their figures come out and hang
together. Nothing timed is asserted; each driver starts and stops its own
redis-server on a free port."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("CACHEME_EXPECT_CORE")),
    reason="the drivers run the in-place build, not the one under test")


def drive(script: str, tmp_path, *args: str) -> dict:
    out = tmp_path / "figures.json"
    r = subprocess.run(
        [sys.executable, os.path.join(BENCH, script), "--ours-python", sys.executable,
         "--ours-src", ROOT, "--bench-dir", str(tmp_path), "--json", str(out), *args],
        capture_output=True, text=True, timeout=240, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "| " in r.stdout  # the table
    return json.loads(out.read_text())


def test_expiry_rows_count_loads_and_the_gets_that_waited(tmp_path):
    # 2.5 s on 2 keys with a 1 s TTL and no refresh: each key expires at
    # least once after warm-up, and the gets meanwhile wait for its reload
    fig = drive("run_expiry.py", tmp_path, "--rows", "ours-plain,ours-plain-failing,ours-refresh-after",
                "--storages", "local,chain", "--duration", "2.5", "--workers", "50", "--keys", "2",
                "--outage", "1", "--period", "2")
    for storage in ("local", "chain"):
        plain = fig[storage]["ours-plain"]
        assert plain["gets"] > 0 and plain["errors"] == 0 and plain["failed_loads"] == 0
        assert plain["loads"] >= 4  # 2 keys, loaded again after their TTL
        assert 0 < plain["waited"] <= plain["gets"]
        assert plain["p50_ms"] <= plain["p99_ms"] <= plain["max_ms"]
        ra = fig[storage]["ours-refresh-after"]
        # today's build ignores Meta.refresh_after: the row says so, or has figures once built
        assert ra.get("skipped", "").startswith("not built") or ra["gets"] > 0
    # the source is down from 1 s to 2 s, when the local values (loaded at
    # 0-0.1 s) expire: their reloads fail, and without stale_if_error the
    # callers get the error (in the chain a local copy refilled from Redis
    # may outlive the outage)
    failing = fig["local"]["ours-plain-failing"]
    assert failing["failed_loads"] > 0 and failing["errors"] > 0


def test_fleet_sums_the_processes_loads_and_counts_redis_commands(tmp_path):
    fig = drive("run_fleet.py", tmp_path, "--contenders", "ours,ours-lease,030", "--requests", "3000",
                "--processes", "2", "--workers", "50")
    unique = fig["unique_keys"]
    ours = fig["contenders"]["ours"]
    assert ours["errors"] == 0
    assert ours["loads"] >= unique  # every key loaded at least once, by one process or both
    assert ours["by_command"].get("set", 0) >= unique
    assert ours["commands"] == sum(ours["by_command"].values())
    assert "info" not in ours["by_command"]
    lease = fig["contenders"]["ours-lease"]
    assert lease.get("skipped", "").startswith("not built") or lease["errors"] == 0
    # no venv in this bench dir: the row says so instead of failing the run
    assert fig["contenders"]["030"]["skipped"].startswith("no venv")
