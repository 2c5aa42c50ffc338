"""The build finds its C libraries with pkg-config and names what is missing."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_missing_library_names_the_debian_package(tmp_path):
    env = dict(os.environ, PKG_CONFIG_LIBDIR=str(tmp_path), PKG_CONFIG_PATH=str(tmp_path))
    r = subprocess.run(
        [sys.executable, "setup.py", "--name"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert r.returncode != 0
    assert "apt-get install libhiredis-dev" in r.stderr + r.stdout


def test_extension_is_the_one_module():
    import cacheme._core as core

    assert core.__name__ == "cacheme._core"
    assert core.__file__.endswith(".so")


def test_build_without_the_sql_libraries_names_them_on_use(tmp_path):
    # the SQL client libraries are optional: the build goes on without them,
    # and a storage that needs one says which package to install
    import shutil

    lib, tmp = tmp_path / "lib", tmp_path / "tmp"
    env = dict(os.environ, CACHEME_NO_PQ="1", CACHEME_NO_MARIADB="1", CACHEME_NO_SQLITE="1")
    r = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(lib), "--build-temp",
         str(tmp), "--force"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    for pkg in ("libpq-dev", "libmariadb-dev", "libsqlite3-dev"):
        assert f"apt-get install {pkg}" in r.stderr
    shutil.copytree(os.path.join(ROOT, "cacheme"), lib / "cacheme", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    code = """
import asyncio, cacheme
from cacheme import _core
for url, pkg in [("postgresql://u@h/db", "libpq-dev"), ("mysql://u@h/db", "libmariadb-dev"),
                 ("sqlite:///x.db", "libsqlite3-dev")]:
    try:
        cacheme.Storage(url=url, table="t")
    except RuntimeError as e:
        assert pkg in str(e), (url, e)
    else:
        raise AssertionError(url)
print("ok", _core.__file__)
"""
    r = subprocess.run([sys.executable, "-P", "-c", code], cwd=str(tmp_path),
                       env=dict(os.environ, PYTHONPATH=str(lib)), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok") and str(lib) in r.stdout
