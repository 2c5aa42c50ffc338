"""The Redis storage against a real 3-master Redis Cluster on local ports."""
import asyncio
import dataclasses
import gc
import logging
import time
import weakref
from datetime import timedelta

import pytest

import cacheme
from cacheme.serializer import MsgPackSerializer
from cacheme.storages.redis import RedisConnectionError, RedisStorage, RedisTimeoutError
from conftest import LEAK_SNAPSHOT, assert_flat, register_local, run_python, unique
from redis_servers import RedisCluster, needs_redis, redis_cluster  # noqa: F401  (fixture)

pytestmark = needs_redis


def make_node(caches, sleep=0.0):
    calls = []

    @dataclasses.dataclass
    class ClusterNode(cacheme.Node):
        uid: int

        def key(self) -> str:
            return f"c:{self.uid}"

        async def load(self):
            calls.append(self.uid)
            if sleep:
                await asyncio.sleep(sleep)
            return self.uid * 10

        class Meta(cacheme.Node.Meta):
            pass

    ClusterNode.Meta.version = unique("v")
    ClusterNode.Meta.caches = caches
    ClusterNode.Meta.serializer = MsgPackSerializer()
    return ClusterNode, calls


async def node_clients(cluster):
    out = []
    for n in cluster.nodes:
        s = RedisStorage(n.url)
        await s.connect()
        out.append(s)
    return out


def cmd_calls(cluster, name):
    total = []
    for n in cluster.nodes:
        calls = 0
        for line in n.cli("INFO", "commandstats").splitlines():
            if line.startswith(f"cmdstat_{name}:"):
                calls = int(line.split("calls=")[1].split(",")[0])
        total.append(calls)
    return total


def error_calls(cluster, name):
    """Per node: how often it answered with error `name` (INFO errorstats)."""
    total = []
    for n in cluster.nodes:
        count = 0
        for line in n.cli("INFO", "errorstats").splitlines():
            if line.startswith(f"errorstat_{name}:"):
                count = int(line.split("count=")[1].split(",")[0])
        total.append(count)
    return total


def reset_stats(cluster):
    for n in cluster.nodes:
        n.cli("CONFIG", "RESETSTAT")


async def test_keys_spread_over_the_masters(redis_cluster):
    name = unique("rc-")
    await cacheme.register_storage(name, cacheme.Storage(url=redis_cluster.url, cluster=True))
    Node, calls = make_node([cacheme.Cache(storage=name, ttl=timedelta(seconds=60))])
    reset_stats(redis_cluster)
    values = await asyncio.gather(*[cacheme.get(Node(i)) for i in range(300)])
    assert values == [i * 10 for i in range(300)]
    assert sorted(calls) == list(range(300))
    sets = cmd_calls(redis_cluster, "setex")
    assert sum(sets) == 300 and all(s > 50 for s in sets), sets
    # the flights end once their fills' replies are read; until then a get
    # would take the value from the flight instead of asking Redis
    for _ in range(100):
        if cacheme._core._flights_in_table() == 0:
            break
        await asyncio.sleep(0.01)
    # every node holds its own slots' keys: read back through the cluster, no reload
    calls.clear()
    assert await asyncio.gather(*[cacheme.get(Node(i)) for i in range(300)]) == values
    assert calls == []
    assert sum(cmd_calls(redis_cluster, "get")) == 600


async def test_get_all_split_per_slot_and_reassembled(redis_cluster):
    name = unique("rc-")
    await cacheme.register_storage(name, cacheme.Storage(url=redis_cluster.url, cluster=True))
    Node, calls = make_node([cacheme.Cache(storage=name, ttl=None)])
    await cacheme.get_all([Node(i) for i in range(0, 40, 2)])
    calls.clear()
    reset_stats(redis_cluster)
    nodes = [Node(i) for i in range(40)]
    assert await cacheme.get_all(nodes) == [i * 10 for i in range(40)]
    assert sorted(calls) == list(range(1, 40, 2))
    mgets = cmd_calls(redis_cluster, "mget")
    assert all(m > 0 for m in mgets)  # split over the three masters
    assert error_calls(redis_cluster, "CROSSSLOT") == [0, 0, 0]  # one MGET per slot
    s = cacheme.data.get_storage_by_name(name)._storage
    pairs = await s.get_all(list(reversed(nodes)), MsgPackSerializer())
    assert [n.uid for n, _ in pairs] == list(range(39, -1, -1))
    # hash tags keep keys in one slot: one MGET
    reset_stats(redis_cluster)
    for i in range(5):
        await s.execute("SET", f"{{tag}}:{i}", str(i))
    assert await s.execute("MGET", *[f"{{tag}}:{i}" for i in range(5)]) == [
        str(i).encode() for i in range(5)]


async def test_herd_and_local_chain_on_cluster(redis_cluster):
    local = await register_local()
    name = unique("rc-")
    await cacheme.register_storage(name, cacheme.Storage(url=redis_cluster.url, cluster=True))
    Node, calls = make_node(
        [cacheme.Cache(storage=local, ttl=None), cacheme.Cache(storage=name, ttl=None)], sleep=0.05)
    reset_stats(redis_cluster)
    out = await asyncio.gather(*[cacheme.get(Node(1)) for _ in range(100)])
    assert out == [10] * 100 and calls == [1]
    assert sum(cmd_calls(redis_cluster, "get")) == 1


async def migrate(cluster, key, stop_after_migrate=False):
    """Move key's slot from its owner to another master (MIGRATING/IMPORTING,
    MIGRATE, SETSLOT NODE). Returns (slot, src, dst) clients."""
    clients = await node_clients(cluster)
    slot = await clients[0].execute("CLUSTER", "KEYSLOT", key)
    ids = [await c.execute("CLUSTER", "MYID") for c in clients]
    owner = None
    for entry in await clients[0].execute("CLUSTER", "SLOTS"):
        if entry[0] <= slot <= entry[1]:
            owner = next(i for i, n in enumerate(cluster.nodes) if n.port == entry[2][1])
    assert owner is not None
    dst = (owner + 1) % len(clients)
    src_c, dst_c = clients[owner], clients[dst]
    await dst_c.execute("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[owner])
    await src_c.execute("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[dst])
    await src_c.execute("MIGRATE", "127.0.0.1", cluster.nodes[dst].port, "", 0, 5000, "KEYS", key)
    if not stop_after_migrate:
        for c in clients:
            await c.execute("CLUSTER", "SETSLOT", slot, "NODE", ids[dst])
    return slot, clients, owner, dst, ids


async def finish_migration(clients, slot, dst_id):
    for c in clients:
        await c.execute("CLUSTER", "SETSLOT", slot, "NODE", dst_id)


async def test_ask_then_moved_redirects(redis_cluster):
    s = RedisStorage(redis_cluster.url, cluster=True)
    await s.connect()
    key = unique("moving-key-")
    await s.execute("SET", key, "v")
    slot, clients, src, dst, ids = await migrate(redis_cluster, key, stop_after_migrate=True)
    reset_stats(redis_cluster)
    # the source answers ASK for the migrated key: ASKING + GET on the target
    # (a redirected command is not counted in commandstats, only in errorstats)
    assert await s.execute("GET", key) == b"v"
    assert error_calls(redis_cluster, "ASK")[src] == 1
    assert cmd_calls(redis_cluster, "asking")[dst] == 1
    assert cmd_calls(redis_cluster, "get")[dst] == 1
    await finish_migration(clients, slot, ids[dst])
    redis_cluster.wait_ok()
    reset_stats(redis_cluster)
    # our map still names the source: MOVED, then the slot points at the target
    assert await s.execute("GET", key) == b"v"
    assert await s.execute("GET", key) == b"v"
    assert error_calls(redis_cluster, "MOVED")[src] == 1
    assert cmd_calls(redis_cluster, "get")[dst] == 2
    # and the whole map is refreshed (CLUSTER SLOTS) on the next request
    await asyncio.sleep(0.15)
    assert await s.execute("GET", key) == b"v"
    for _ in range(500):  # the refresh runs in the background: wait for it, not 50 ms
        if sum(cmd_calls(redis_cluster, "cluster|slots")) >= 1:
            break
        await asyncio.sleep(0.01)
    assert sum(cmd_calls(redis_cluster, "cluster|slots")) >= 1
    assert error_calls(redis_cluster, "MOVED")[src] == 1
    await s.close()
    for c in clients:
        await c.close()


async def test_set_all_and_mget_across_nodes_in_order(redis_cluster):
    s = RedisStorage(redis_cluster.url, cluster=True)
    await s.connect()
    Node, _ = make_node([])
    data = [(Node(i), {"i": i}) for i in range(500)]
    await s.set_all(data, timedelta(seconds=30), MsgPackSerializer())
    pairs = await s.get_all([n for n, _ in data] + [Node(10_000)], MsgPackSerializer())
    assert [v["i"] for _, v in pairs] == list(range(500))
    assert type(pairs) is list  # every node answered: no PartialResult
    assert s._connections() >= 3
    await s.close()
    assert s._connections() == 0


async def test_redirect_limit_is_per_request_not_per_call(redis_cluster):
    # A fresh client knows no slots: every request goes to the seed node and
    # those of the other masters' slots come back MOVED, far more than the
    # redirect limit for one call, but only one redirect per request.
    Node, _ = make_node([])
    data = [(Node(i), i) for i in range(60)]
    s = RedisStorage(redis_cluster.url, cluster=True)
    await s.set_all(data, None, MsgPackSerializer())
    await s.close()
    s = RedisStorage(redis_cluster.url, cluster=True)
    pairs = await s.get_all([n for n, _ in data], MsgPackSerializer())
    assert [v for _, v in pairs] == list(range(60))
    await s.close()


def test_cluster_rejects_a_database_other_than_0():
    # a cluster has only database 0: SELECT would fail on every connection
    with pytest.raises(ValueError, match="database 0"):
        RedisStorage("redis://127.0.0.1:7000/2", cluster=True)
    with pytest.raises(ValueError, match="database 0"):
        RedisStorage("redis://127.0.0.1:7000", cluster=True, db=1)
    RedisStorage("redis://127.0.0.1:7000/0", cluster=True).close_now()


def tag_node(tag, caches=None, calls=None):
    """Nodes whose keys all hash to the slot of `tag` (loading f"v{uid}")."""

    @dataclasses.dataclass
    class TagNode(cacheme.Node):
        uid: int

        def key(self) -> str:
            return f"{{{tag}}}:{self.uid}"

        async def load(self):
            if calls is not None:
                calls.append(self.uid)
            return f"v{self.uid}"

        class Meta(cacheme.Node.Meta):
            pass

    TagNode.Meta.version = unique("v")
    if caches is not None:
        TagNode.Meta.caches = caches
        TagNode.Meta.serializer = MsgPackSerializer()
    return TagNode


async def empty_slot_tag(clients, prefix):
    """A tag whose slot holds no other test's keys: SETSLOT NODE refuses to
    give away a slot with keys left behind."""
    for _ in range(100):
        tag = unique(prefix)
        slot = await clients[0].execute("CLUSTER", "KEYSLOT", tag)
        if not any([await c.execute("CLUSTER", "COUNTKEYSINSLOT", slot) for c in clients]):
            return tag, slot
    raise AssertionError("no empty slot found")


async def slot_owner(cluster, clients, slot):
    for entry in await clients[0].execute("CLUSTER", "SLOTS"):
        if entry[0] <= slot <= entry[1]:
            return next(i for i, n in enumerate(cluster.nodes) if n.port == entry[2][1])
    raise AssertionError(f"slot {slot} has no owner")


async def test_tryagain_during_a_slot_migration_is_retried(redis_cluster):
    # An MGET of a migrating slot whose keys are split between the two nodes
    # is answered TRYAGAIN until the migration ends; it is re-sent after a
    # pause instead of failing the whole get_all.
    ser = MsgPackSerializer()
    clients = await node_clients(redis_cluster)
    # a tag whose slot holds no other test's keys: SETSLOT NODE refuses to
    # give away a slot with keys left behind
    for _ in range(100):
        tag = unique("tryagain-")
        slot = await clients[0].execute("CLUSTER", "KEYSLOT", tag)
        if not any([await c.execute("CLUSTER", "COUNTKEYSINSLOT", slot) for c in clients]):
            break
    Node = tag_node(tag)
    s = RedisStorage(redis_cluster.url, cluster=True)
    await s.connect()
    await s.set_all([(Node(0), "a"), (Node(1), "b")], None, ser)
    ids = [await c.execute("CLUSTER", "MYID") for c in clients]
    src = await slot_owner(redis_cluster, clients, slot)
    dst = (src + 1) % len(clients)
    dst_port = redis_cluster.nodes[dst].port
    await clients[dst].execute("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[src])
    await clients[src].execute("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[dst])
    keys = [Node(i).full_key() for i in range(2)]
    await clients[src].execute("MIGRATE", "127.0.0.1", dst_port, "", 0, 5000, "KEYS", keys[0])
    reset_stats(redis_cluster)

    async def finish():
        await asyncio.sleep(0.03)
        await clients[src].execute("MIGRATE", "127.0.0.1", dst_port, "", 0, 5000, "KEYS", keys[1])
        for c in clients:
            await c.execute("CLUSTER", "SETSLOT", slot, "NODE", ids[dst])

    try:
        pairs, _ = await asyncio.gather(s.get_all([Node(0), Node(1)], ser), finish())
        assert [v for _, v in pairs] == ["a", "b"]
        assert error_calls(redis_cluster, "TRYAGAIN")[src] >= 1
    finally:
        for c in clients:
            await c.execute("CLUSTER", "SETSLOT", slot, "NODE", ids[dst])
        redis_cluster.wait_ok()
        await s.close()
        for c in clients:
            await c.close()


async def test_clusterdown_is_retried(redis_cluster):
    # A node that serves no slot for a while answers CLUSTERDOWN; the request
    # is re-sent after a pause (and the slot map refreshed).
    ser = MsgPackSerializer()
    tag = unique("down-")
    Node = tag_node(tag)
    s = RedisStorage(redis_cluster.url, cluster=True)
    await s.connect()
    await s.set(Node(0), "x", None, ser)
    clients = await node_clients(redis_cluster)
    slot = await clients[0].execute("CLUSTER", "KEYSLOT", tag)
    owner = await slot_owner(redis_cluster, clients, slot)
    await clients[owner].execute("CLUSTER", "DELSLOTS", slot)
    reset_stats(redis_cluster)

    async def restore():
        await asyncio.sleep(0.03)
        await clients[owner].execute("CLUSTER", "ADDSLOTS", slot)

    try:
        value, _ = await asyncio.gather(s.get(Node(0), ser), restore())
        assert value == "x"
        assert error_calls(redis_cluster, "CLUSTERDOWN")[owner] >= 1
    finally:
        try:
            await clients[owner].execute("CLUSTER", "ADDSLOTS", slot)
        except Exception:
            pass  # restored already
        redis_cluster.wait_ok()
        await s.close()
        for c in clients:
            await c.close()


async def test_busy_poll_off_for_a_cluster(redis_cluster):
    # busy polling follows a single server's pools only (a cluster's change
    # with its slot map)
    s = RedisStorage(redis_cluster.url, cluster=True, busy_poll=0.005)
    await s.connect()
    await s.execute("SET", "a", "1")
    for _ in range(20):
        assert await s.execute("GET", "a") == b"1"
    info = s.busy_poll_info()
    await s.close()
    assert info["busy_poll_hits"] == info["busy_poll_timeouts"] == 0


async def flights_done():
    # the flights end once their fills' replies are read
    for _ in range(200):
        if cacheme._core._flights_in_table() == 0:
            return
        await asyncio.sleep(0.01)


@pytest.fixture
def lossy_cluster():
    """A cluster of its own, for tests that stop or kill a master; the
    healthy masters keep serving their slots while one is down."""
    with RedisCluster(extra=["--cluster-require-full-coverage", "no"]) as cluster:
        yield cluster


@pytest.mark.parametrize("how", ["pause", "kill"])
async def test_get_all_keeps_the_healthy_masters_pieces(lossy_cluster, caplog, how):
    # One master down (stopped: its requests time out; killed: its
    # connections are refused): the keys of the other masters are still
    # returned, the down master's keys are misses, and its failure is logged
    # once per get_all naming it, not once per slot.
    cluster = lossy_cluster
    name = unique("rc-")
    await cacheme.register_storage(
        name, cacheme.Storage(url=cluster.url, cluster=True, timeout=0.3, connect_timeout=0.3))
    Node, calls = make_node([cacheme.Cache(storage=name, ttl=None)])
    nodes = [Node(i) for i in range(60)]
    assert await cacheme.get_all(nodes) == [i * 10 for i in range(60)]
    await flights_done()
    clients = await node_clients(cluster)
    owner = []
    for n in nodes:
        slot = await clients[0].execute("CLUSTER", "KEYSLOT", n.full_key())
        owner.append(await slot_owner(cluster, clients, slot))
    for c in clients:
        await c.close()
    victim = 1  # not the seed node of the URL
    lost = [i for i in range(60) if owner[i] == victim]
    kept = [i for i in range(60) if owner[i] != victim]
    assert lost and kept
    port = str(cluster.nodes[victim].port)
    s = cacheme.data.get_storage_by_name(name)._storage
    ser = MsgPackSerializer()

    def piece_warnings():  # the storage's own, not the request flow's (fills)
        return [r for r in caplog.records
                if r.levelno == logging.WARNING and port in r.getMessage()
                and "failed in get_all" in r.getMessage()]

    if how == "pause":
        cluster.nodes[victim].pause()
    else:
        cluster.nodes[victim].kill()
    try:
        with caplog.at_level(logging.WARNING, logger="cacheme"):
            for _ in range(2):  # the first finds the master down, the next its pool backing off
                caplog.clear()
                pairs = await s.get_all(nodes, ser)
                assert [(n.uid, v) for n, v in pairs] == [(i, i * 10) for i in kept]
                assert len(piece_warnings()) == 1, [r.getMessage() for r in caplog.records]
                # the failed node is counted on the result, for the request flow
                assert isinstance(pairs, cacheme._core.PartialResult) and pairs.errors == 1

            # nothing answered: the call fails as a whole (its caller logs it)
            caplog.clear()
            with pytest.raises((RedisConnectionError, RedisTimeoutError)):
                await s.get_all([nodes[i] for i in lost], ser)
            assert piece_warnings() == []

            caplog.clear()
            calls.clear()
            Node.get_metrics().reset()
            assert await cacheme.get_all(nodes) == [i * 10 for i in range(60)]
            assert sorted(calls) == lost
            stats = Node.get_metrics().storage_stats()[name]
            assert (stats["hits"], stats["misses"]) == (len(kept), len(lost))
            # the failed piece, then the fill of the lost keys on that master
            assert stats["errors"] == 2, stats
            assert len(piece_warnings()) == 1, [r.getMessage() for r in caplog.records]
    finally:
        if how == "pause":
            cluster.nodes[victim].resume()
        await flights_done()


async def test_get_all_with_two_masters_down(lossy_cluster, caplog):
    # each failed master is one error, logged once; with nothing answered the
    # first failure is raised (for the caller to log) and the other logged
    cluster = lossy_cluster
    ser = MsgPackSerializer()
    Node, _ = make_node([])
    nodes = [Node(i) for i in range(60)]
    s = RedisStorage(cluster.url, cluster=True, timeout=0.3, connect_timeout=0.3)
    await s.set_all([(n, n.uid) for n in nodes], None, ser)
    clients = await node_clients(cluster)
    owner = []
    for n in nodes:
        slot = await clients[0].execute("CLUSTER", "KEYSLOT", n.full_key())
        owner.append(await slot_owner(cluster, clients, slot))
    for c in clients:
        await c.close()
    cluster.nodes[1].kill()
    cluster.nodes[2].kill()
    ports = [str(cluster.nodes[i].port) for i in (1, 2)]

    def warned():
        return sorted(p for r in caplog.records for p in ports
                      if r.levelno == logging.WARNING and p in r.getMessage()
                      and "failed in get_all" in r.getMessage())

    try:
        with caplog.at_level(logging.WARNING, logger="cacheme"):
            pairs = await s.get_all(nodes, ser)
            assert [n.uid for n, _ in pairs] == [i for i in range(60) if owner[i] == 0]
            assert pairs.errors == 2
            assert warned() == sorted(ports)
            caplog.clear()
            with pytest.raises(RedisConnectionError):
                await s.get_all([n for i, n in enumerate(nodes) if owner[i] != 0], ser)
            assert len(warned()) == 1
    finally:
        await s.close()


async def test_get_all_follows_a_half_migrated_slot_key_by_key(redis_cluster):
    # A slot left half migrated (some keys moved, the rest still on the
    # source) for longer than the TRYAGAIN retries: the MGET of its keys is
    # answered TRYAGAIN by the source every time, so it is followed key by
    # key: GET on the source, and ASKING + GET on the target for the keys the
    # source answers ASK for. Every get_all succeeds while the slot stays so.
    ser = MsgPackSerializer()
    clients = await node_clients(redis_cluster)
    tag, slot = await empty_slot_tag(clients, "halfway-")
    name = unique("rc-")
    await cacheme.register_storage(name, cacheme.Storage(url=redis_cluster.url, cluster=True))
    calls = []
    Node = tag_node(tag, [cacheme.Cache(storage=name, ttl=None)], calls)
    s = cacheme.data.get_storage_by_name(name)._storage
    await s.set_all([(Node(i), f"v{i}") for i in range(6)], None, ser)
    ids = [await c.execute("CLUSTER", "MYID") for c in clients]
    src = await slot_owner(redis_cluster, clients, slot)
    dst = (src + 1) % len(clients)
    dst_port = redis_cluster.nodes[dst].port
    await clients[dst].execute("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[src])
    await clients[src].execute("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[dst])
    moved = [Node(i).full_key() for i in (0, 2, 4)]
    await clients[src].execute("MIGRATE", "127.0.0.1", dst_port, "", 0, 5000, "KEYS", *moved)
    reset_stats(redis_cluster)
    try:
        # Node(6) is stored nowhere: the source answers ASK, the target nil
        want = [(i, f"v{i}") for i in range(6)]
        rounds = 0
        end = time.monotonic() + 0.6  # well past 5 retries x 50 ms
        while rounds < 3 or time.monotonic() < end:
            pairs = await s.get_all([Node(i) for i in range(7)], ser)
            assert [(n.uid, v) for n, v in pairs] == want
            rounds += 1
        assert cmd_calls(redis_cluster, "asking")[dst] >= 3 * rounds
        # only keys the source no longer has: it answers the MGET with one
        # ASK, and each key is asked of the target (ASKING + GET)
        reset_stats(redis_cluster)
        pairs = await s.get_all([Node(i) for i in (0, 2, 4, 6)], ser)
        assert [(n.uid, v) for n, v in pairs] == [(0, "v0"), (2, "v2"), (4, "v4")]
        assert error_calls(redis_cluster, "ASK")[src] == 1
        assert cmd_calls(redis_cluster, "asking")[dst] == 4
        assert error_calls(redis_cluster, "TRYAGAIN") == [0, 0, 0]
        # through the request flow: found in the cluster, nothing reloaded
        # but the key stored nowhere
        assert await cacheme.get_all([Node(i) for i in range(7)]) == [f"v{i}" for i in range(7)]
        assert calls == [6]
    finally:
        await flights_done()
        left = await clients[src].execute("CLUSTER", "GETKEYSINSLOT", slot, 100)
        if left:
            await clients[src].execute(
                "MIGRATE", "127.0.0.1", dst_port, "", 0, 5000, "KEYS", *left)
        for c in clients:
            await c.execute("CLUSTER", "SETSLOT", slot, "NODE", ids[dst])
        redis_cluster.wait_ok()
        for c in clients:
            await c.close()


async def test_get_all_keeps_the_other_slots_when_one_is_not_served(redis_cluster, caplog):
    # A slot no master serves for longer than the CLUSTERDOWN retries: its
    # keys are misses, the other masters' keys are returned. (Its former
    # owner, missing a slot, answers CLUSTERDOWN for all of its slots.)
    ser = MsgPackSerializer()
    Tag = tag_node(unique("unserved-"))
    Node, _ = make_node([])
    # keys of different lengths: keys that differ in one character only can
    # share the high bits of their CRC16, and so one master's slot range
    others = [Node(i * 1009) for i in range(20)]
    s = RedisStorage(redis_cluster.url, cluster=True)
    await s.connect()
    await s.set_all([(Tag(0), "x")] + [(n, n.uid) for n in others], None, ser)
    clients = await node_clients(redis_cluster)
    slot = await clients[0].execute("CLUSTER", "KEYSLOT", Tag(0).full_key())
    owner = await slot_owner(redis_cluster, clients, slot)
    kept = []
    for n in others:
        key_slot = await clients[0].execute("CLUSTER", "KEYSLOT", n.full_key())
        if await slot_owner(redis_cluster, clients, key_slot) != owner:
            kept.append(n.uid)
    assert kept, "every key landed on the master of the unserved slot"
    await clients[owner].execute("CLUSTER", "DELSLOTS", slot)
    reset_stats(redis_cluster)
    try:
        with caplog.at_level(logging.WARNING, logger="cacheme"):
            pairs = await s.get_all([Tag(0)] + others, ser)
        assert [(n.uid, v) for n, v in pairs] == [(i, i) for i in kept]
        assert pairs.errors == 1
        assert error_calls(redis_cluster, "CLUSTERDOWN")[owner] >= 1
        assert len([r for r in caplog.records if "failed in get_all" in r.getMessage()]) == 1
    finally:
        try:
            await clients[owner].execute("CLUSTER", "ADDSLOTS", slot)
        except Exception:
            pass
        redis_cluster.wait_ok()
        await s.close()
        for c in clients:
            await c.close()


LEAK_HARNESS = r'''
import asyncio, dataclasses, logging
import cacheme
from cacheme.serializer import MsgPackSerializer
from cacheme.storages.redis import RedisStorage
from redis_servers import RedisCluster

logging.getLogger("cacheme").setLevel(logging.ERROR)


@dataclasses.dataclass
class N(cacheme.Node):
    uid: int
    def key(self): return f"{{t}}:{self.uid}" if self.uid < 8 else f"k:{self.uid}"
    class Meta(cacheme.Node.Meta):
        version = "v1"


async def main(cl):
    ser = MsgPackSerializer()
    s = RedisStorage(cl.url, cluster=True, retry_backoff=0.001, retry_backoff_max=0.001)
    nodes = [N(i) for i in range(60)]
    await s.set_all([(n, n.uid) for n in nodes if n.uid != 7], None, ser)
    cs = [RedisStorage(n.url) for n in cl.nodes]
    slot = await cs[0].execute("CLUSTER", "KEYSLOT", "t")
    ids = [await c.execute("CLUSTER", "MYID") for c in cs]
    counts = [await c.execute("CLUSTER", "COUNTKEYSINSLOT", slot) for c in cs]
    src = next(i for i, n in enumerate(counts) if n)
    dst = (src + 1) % 3
    await cs[dst].execute("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[src])
    await cs[src].execute("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[dst])
    moved = [N(i).full_key() for i in (0, 2, 4, 6)]
    await cs[src].execute("MIGRATE", "127.0.0.1", cl.nodes[dst].port, "", 0, 5000, "KEYS", *moved)
    for c in cs:
        await c.close()
    cl.nodes[3 - src - dst].kill()  # the master at neither end of the migration

    async def rounds(k):
        for _ in range(k):
            p = await s.get_all(nodes, ser)
            assert p.errors == 1 and [v for _, v in p][:7] == list(range(7)), p
            p = await s.get_all(nodes[:8:2], ser)  # only moved keys: ASK
            assert [v for _, v in p] == [0, 2, 4, 6], p

    await rounds(300)
    before = snapshot()
    await rounds({n})
    after = snapshot()
    print(before[0], after[0], before[1], after[1])
    await s.close()


with RedisCluster(extra=["--cluster-require-full-coverage", "no"]) as cl:
    asyncio.run(main(cl))
'''


def test_partial_and_per_key_get_all_do_not_leak():
    # a master down (its pieces failed and logged) and a half-migrated slot
    # (followed key by key, with ASK) in every call
    code = LEAK_SNAPSHOT + LEAK_HARNESS.replace("{n}", "3000")
    assert_flat(run_python(code), rss_kib=4096)


def test_a_cycle_through_a_cluster_retry_is_collected(redis_cluster):
    # A request answered CLUSTERDOWN waits on the client's retry list; its op
    # holds the client. With the loop closed before the retry (nothing will
    # send it again) and the client dropped, client -> retry entry -> op ->
    # client is a cycle of garbage the collector must find and free.
    ser = MsgPackSerializer()
    Node = tag_node(unique("gc-retry-"))

    async def admin(cmd, key=None, slot_owner_pair=None):
        # DELSLOTS on the key's owner, or ADDSLOTS back on the owner it had
        # (once deleted, a slot has no owner to look up)
        clients = await node_clients(redis_cluster)
        try:
            if slot_owner_pair is None:
                slot = await clients[0].execute("CLUSTER", "KEYSLOT", key)
                owner = await slot_owner(redis_cluster, clients, slot)
            else:
                slot, owner = slot_owner_pair
            await clients[owner].execute("CLUSTER", cmd, slot)
            return slot, owner
        finally:
            for c in clients:
                await c.close()

    loop = asyncio.new_event_loop()
    tag = Node(0).key()
    s = RedisStorage(redis_cluster.url, cluster=True)

    async def call(method, *args):
        return await method(*args)

    loop.run_until_complete(s.connect())
    loop.run_until_complete(call(s.set, Node(0), "x", None, ser))
    deleted = asyncio.run(admin("DELSLOTS", key=tag))
    try:
        fut = loop.create_task(call(s.get, Node(0), ser))
        for _ in range(10000):  # until the CLUSTERDOWN reply has put it on the list
            if s._retrying():
                break
            loop.run_until_complete(asyncio.sleep(0.001))
        assert s._retrying() == 1
        ref = weakref.ref(s)
        loop.close()  # the retry timer is dropped with the loop's schedule
        del s, fut
        gc.collect()
        assert ref() is None, gc.get_referrers(ref())
    finally:
        if not loop.is_closed():
            loop.close()
        asyncio.run(admin("ADDSLOTS", slot_owner_pair=deleted))
        redis_cluster.wait_ok()
