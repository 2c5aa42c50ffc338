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
    fig = drive("run_expiry.py", tmp_path, "--rows",
                "ours-hit,ours-plain,ours-plain-failing,ours-refresh-after",
                "--storages", "local,chain", "--duration", "2.5", "--workers", "50", "--keys", "2",
                "--outage", "1", "--period", "2")
    for storage in ("local", "chain"):
        plain = fig[storage]["ours-plain"]
        assert plain["gets"] > 0 and plain["errors"] == 0 and plain["failed_loads"] == 0
        assert plain["loads"] >= 4  # 2 keys, loaded again after their TTL
        assert 0 < plain["waited"] <= plain["gets"]
        assert plain["p50_ms"] <= plain["p99_ms"] <= plain["max_ms"]
        # the hit path (issue 25's reference): keys that never expire, one load each, no waits
        hit = fig[storage]["ours-hit"]
        assert hit["loads"] == 2 and hit["waited"] == 0 and hit["errors"] == 0 and hit["gets"] > 0
        ra = fig[storage]["ours-refresh-after"]
        # a build without Meta.refresh_after says so; with it, no get waits for the reload
        assert ra.get("skipped", "").startswith("not built") or (ra["gets"] > 0 and ra["waited"] == 0)
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


def test_fleet_hot_workload_spreads_the_requests_over_few_keys(tmp_path):
    # --keys N: the same requests uniform over N keys, so every process meets every key
    fig = drive("run_fleet.py", tmp_path, "--contenders", "ours,ours-lease", "--requests", "2000",
                "--keys", "20", "--processes", "2", "--workers", "50")
    assert fig["keys"] == 20 and fig["unique_keys"] == 20
    assert (tmp_path / "fleet-trace-hot-2000-20.json").exists()
    ours = fig["contenders"]["ours"]
    assert ours["errors"] == 0 and ours["loads"] >= 20
    lease = fig["contenders"]["ours-lease"]
    # with leases one load per key across the processes (issue 24's goal)
    assert lease.get("skipped", "").startswith("not built") or (lease["errors"] == 0 and lease["loads"] == 20)


def test_fleet_refuses_a_negative_key_count(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(BENCH, "run_fleet.py"), "--keys", "-1",
                        "--bench-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "--keys must be positive" in r.stderr
