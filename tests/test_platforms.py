"""What the build promises on each supported CPython (3.11+): the private
CPython API only behind version gates with public fallbacks, and the
metadata that says which versions those are."""
import os
import re
import sys

from cacheme import _core

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_private_api_on_exactly_where_it_is_known():
    # 3.11-3.13 use the gated private calls unless the build forces the
    # public fallbacks (make test-no-private: CACHEME_NO_PRIVATE=1)
    expect = os.environ.get("CACHEME_EXPECT_PRIVATE")
    known = (3, 11) <= sys.version_info[:2] <= (3, 13)
    if expect is not None:
        assert _core._private_api is (expect == "1")
    else:
        assert _core._private_api is known
    # the local hit hashes the key from its parts only with the private secret,
    # and there it must be on (the probe at import matched hash())
    siphash13 = sys.hash_info.algorithm == "siphash13" and sys.hash_info.cutoff == 0
    assert _core._key_parts is (_core._private_api and siphash13)


def test_keys_hash_as_their_str_whichever_path():
    # with or without the parts path, what the store keeps is hash(full key)
    for key in ("k", "user:1", "x" * 7, "x" * 8, "é" * 20, "ключ", "a" * 300):
        for version in ("", "v1", "version-123456789"):
            h = _core._hash_parts(key, version)
            assert h is None or h == hash(f"{_core.get_prefix()}:{key}:{version}")


def test_requires_python_311_everywhere():
    # 3.10 lacks Py_TPFLAGS_MANAGED_DICT, PyType_GetModuleByDef, PyType_GetName
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        assert re.search(r'^requires-python = ">=3.11"$', f.read(), re.M)
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    assert not re.search(r">= ?3\.10|3\.10\+", readme)
    assert re.search(r"CPython 3\.11", readme)
