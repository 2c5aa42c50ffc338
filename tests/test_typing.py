"""mypy checks a Memoize'd function's arguments and get()'s return type."""
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

GOOD = '''
import dataclasses
from typing import Dict, List
from typing import assert_type
import cacheme

@dataclasses.dataclass
class UserNode(cacheme.Node[Dict[str, int]]):
    uid: int
    def key(self) -> str:
        return f"u:{self.uid}"
    async def load(self) -> Dict[str, int]:
        return {"uid": self.uid}

@cacheme.Memoize(UserNode)
async def get_user(uid: int, verbose: bool = False) -> List[int]:
    return [uid]

@get_user.to_node
def _(uid: int, verbose: bool = False) -> UserNode:
    return UserNode(uid)

async def main() -> None:
    value = await cacheme.get(UserNode(1))
    assert_type(value, Dict[str, int])
    users = await cacheme.get_all([UserNode(1)])
    assert_type(users, List[Dict[str, int]])
    got = await get_user(1, verbose=True)
    assert_type(got, List[int])
'''

BAD = '''
import cacheme
from cacheme import Node

class N(Node[int]):
    def key(self) -> str:
        return "n"
    async def load(self) -> int:
        return 1

@cacheme.Memoize(N)
async def f(a: int) -> str:
    return str(a)

async def main() -> None:
    await f("not an int")
    x: str = await cacheme.get(N())
'''


def mypy(tmp_path, source):
    path = tmp_path / "snippet.py"
    path.write_text(textwrap.dedent(source))
    pytest.importorskip("mypy")
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--follow-imports=silent", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "MYPYPATH": ROOT},
    )


def test_mypy_accepts_correct_use(tmp_path):
    r = mypy(tmp_path, GOOD)
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_rejects_wrong_arguments_and_return_type(tmp_path):
    r = mypy(tmp_path, BAD)
    assert r.returncode == 1, r.stdout
    assert 'Argument 1 to "__call__" of "Memoized" has incompatible type "str"; expected "int"' in r.stdout
    # the str-typed assignment of get()'s int value is flagged on its line
    assert "snippet.py:17: error" in r.stdout, r.stdout
