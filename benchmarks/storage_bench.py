"""What the storage benchmarks' workers share (bench_sql.py, bench_mongo.py,
sql_read_cost.py): the node class they read and fill through, and a
server's CPU time. Imported by workers run under our interpreter and under
cacheme 0.3.0's, so only 0.3.0's API here.

    sys.path.append(BENCHMARKS_DIR)
    import storage_bench
    R = storage_bench.node_class("read", "sql", "x" * 100)
    ... storage_bench.loads  # how many loads ran
"""
import os
from dataclasses import dataclass

import cacheme
from cacheme.serializer import MsgPackSerializer

loads = 0


def node_class(tag, storage, data):
    """Nodes keyed "<tag>:<uid>", cached in storage only (no TTL,
    MsgPackSerializer); a load returns {"uid": uid, "data": data} and counts
    in `loads`."""

    @dataclass
    class BenchNode(cacheme.Node):
        uid: int

        def key(self) -> str:
            return f"{tag}:{self.uid}"

        async def load(self):
            global loads
            loads += 1
            return {"uid": self.uid, "data": data}

        class Meta(cacheme.Node.Meta):
            version = "v1"
            caches = [cacheme.Cache(storage=storage, ttl=None)]
            serializer = MsgPackSerializer()

    return BenchNode


def server_cpu(pid):
    """The CPU seconds (user + system) process pid has used so far, or 0.0
    without one (pid 0 or None)."""
    if not pid:
        return 0.0
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
