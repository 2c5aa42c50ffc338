"""Live compatibility check, both ways, between cacheme 0.3.0 and this build.

Run with the 0.3.0 venv's Python (make bench-serializer does):
    .bench/venv-030/bin/python benchmarks/roundtrip_030.py --ours-python .venv/bin/python
For every value of tests/ser030_models.py and every serializer:
  0.3.0 dumps -> ours loads  == value       (checked in our interpreter)
  ours dumps  -> 0.3.0 loads == value       (checked here)
  and the two dumps are the same bytes (pickle: same Python version only).
Our side runs as a subprocess (--side ours) fed JSON on stdin.
"""
import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(ROOT, "tests"))


def _cases(m):
    for name, (value, fams) in m.value_table().items():
        for ser_name in m.SERIALIZERS:
            fam = m.families_of(ser_name)
            if "all" in fams or fam in fams:
                yield name, ser_name, value, fam


def side_ours() -> None:
    import cacheme.serializer as S
    import ser030_models as m

    theirs = json.load(sys.stdin)
    out, failures = {}, []
    for name, ser_name, value, fam in _cases(m):
        key = f"{ser_name}/{name}"
        if key not in theirs:
            continue
        ser = getattr(S, ser_name)()
        got = ser.loads(bytes.fromhex(theirs[key]))
        if got != m.expected_after(value, fam):
            failures.append(f"ours.loads(0.3.0 bytes) {key}: {got!r}")
        out[key] = ser.dumps(value).hex()
    json.dump({"dumps": out, "failures": failures}, sys.stdout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", choices=["030", "ours"], default="030")
    ap.add_argument("--ours-python", default=os.path.join(ROOT, ".venv", "bin", "python"))
    args = ap.parse_args()
    if args.side == "ours":
        side_ours()
        return
    import importlib.metadata as md

    import cacheme.serializer as S030
    import ser030_models as m

    assert md.version("cacheme") == "0.3.0", "run me with cacheme 0.3.0's Python"
    theirs = {}
    for name, ser_name, value, fam in _cases(m):
        theirs[f"{ser_name}/{name}"] = getattr(S030, ser_name)().dumps(value).hex()
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run([os.path.abspath(args.ours_python), os.path.abspath(__file__),
                        "--side", "ours"], input=json.dumps(theirs), capture_output=True,
                       text=True, env=env, cwd=ROOT)
    if r.returncode != 0:
        sys.exit(f"our side failed:\n{r.stderr}")
    ours = json.loads(r.stdout)
    failures = list(ours["failures"])
    same = 0
    for name, ser_name, value, fam in _cases(m):
        key = f"{ser_name}/{name}"
        if key not in ours["dumps"]:
            failures.append(f"{key}: missing on our side (pydantic not installed there?)")
            continue
        blob = bytes.fromhex(ours["dumps"][key])
        try:
            got = getattr(S030, ser_name)().loads(blob)
        except Exception as e:  # noqa: BLE001
            failures.append(f"0.3.0.loads(our bytes) {key}: {e!r}")
            continue
        if got != m.expected_after(value, fam):
            failures.append(f"0.3.0.loads(our bytes) {key}: {got!r}")
        same += blob.hex() == theirs[key]
    total = len(theirs)
    print(f"roundtrip 0.3.0 <-> ours: {total} cases, both directions; identical bytes in "
          f"{same}/{total}; failures: {len(failures)}")
    for f in failures:
        print("  FAIL", f)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
