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
