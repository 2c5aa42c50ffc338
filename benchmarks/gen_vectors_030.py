"""Generate tests/data/serializer_vectors_030.json with cacheme 0.3.0.

Run once in the 0.3.0 venv (make serializer-vectors):
    .bench/venv-030/bin/python benchmarks/gen_vectors_030.py tests/data/serializer_vectors_030.json
For every entry of the value table (tests/ser030_models.py) and every 0.3.0
serializer that can hold it, store the hex of what 0.3.0 wrote. The pydantic
entries come from pydantic 1.x (0.3.0 needs pydantic<2); pickles of pydantic
models are not stored since a v1 pickle does not load into a v2 model.
"""
import json
import os
import platform
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import cacheme.serializer as s030  # noqa: E402
import importlib.metadata as md  # noqa: E402

import ser030_models as m  # noqa: E402


def main(out: str) -> None:
    assert md.version("cacheme") == "0.3.0", "run me with cacheme 0.3.0"
    vectors = []
    for name, (value, fams) in m.value_table().items():
        for ser_name in m.SERIALIZERS:
            fam = m.families_of(ser_name)
            if "all" not in fams and fam not in fams:
                continue
            ser = getattr(s030, ser_name)()
            blob = ser.dumps(value)
            back = ser.loads(blob)
            assert back == m.expected_after(value, fam), (name, ser_name, back)
            vectors.append({"name": name, "serializer": ser_name, "hex": blob.hex()})
    doc = {
        "generated_by": "benchmarks/gen_vectors_030.py",
        "cacheme": md.version("cacheme"),
        "msgpack": md.version("msgpack"),
        "pydantic": md.version("pydantic"),
        "python": platform.python_version(),
        "vectors": vectors,
    }
    with open(out, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"wrote {len(vectors)} vectors to {out}")


if __name__ == "__main__":
    main(sys.argv[1])
