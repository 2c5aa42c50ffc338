"""The figures a benchmark driver prints, also written as JSON (``--json
OUT``) for benchmarks/charts.py. Standard library only.

Every file is one run: {"bench": <driver>, "date": "YYYY-MM-DD",
"command": <argv>, "commit": <git HEAD or null>, "note": <free text>, ...}
plus the driver's own figures (see each driver's --json help).
"""
import datetime
import json
import os
import subprocess
import sys
from typing import Any, Dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _commit() -> Any:
    try:
        r = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                           capture_output=True, text=True, timeout=10)
    except OSError:
        return None
    return r.stdout.strip() or None


def write(path: str, bench: str, figures: Dict[str, Any]) -> None:
    doc = {"bench": bench, "date": datetime.date.today().isoformat(),
           "command": " ".join(["python3"] + sys.argv), "commit": _commit(), "note": ""}
    doc.update(figures)
    with open(path, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=False)
        f.write("\n")
    print(f"{bench}: figures written to {path}", file=sys.stderr)
