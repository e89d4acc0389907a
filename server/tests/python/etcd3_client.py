"""The python-etcd3 client (etcd3 0.12, as applications use it) against a Strata cluster.

Usage: etcd3_client.py HOST:PORT [HOST:PORT...]
Each step prints what it checked; the first failed check raises and exits non-zero.
With ETCD3_CA, ETCD3_CERT and ETCD3_KEY set, connects over TLS presenting that client
certificate; ETCD3_STEPS (comma-separated step names) runs only those steps.
"""

import os

import sys
import threading
import time

import etcd3


def connect(endpoint):
    host, port = endpoint.rsplit(":", 1)
    tls = {}
    if os.environ.get("ETCD3_CA"):
        tls = dict(
            ca_cert=os.environ["ETCD3_CA"],
            cert_cert=os.environ["ETCD3_CERT"],
            cert_key=os.environ["ETCD3_KEY"],
        )
    return etcd3.client(host=host, port=int(port), timeout=10, **tls)


def check(what, got, want):
    if got != want:
        raise AssertionError("%s: got %r, want %r" % (what, got, want))
    print("ok", what)


def kv(c):
    c.put("/py/a", "1")
    value, meta = c.get("/py/a")
    check("put then get", value, b"1")
    check("version of a new key", meta.version, 1)
    first = meta.mod_revision
    c.put("/py/a", "2")
    value, meta = c.get("/py/a")
    check("overwrite", (value, meta.version, meta.create_revision), (b"2", 2, first))
    check("put_if_not_exists on an existing key", c.put_if_not_exists("/py/a", "x"), False)
    check("put_if_not_exists on a new key", c.put_if_not_exists("/py/b", "x"), True)
    check("delete", c.delete("/py/a"), True)
    check("delete of a missing key", c.delete("/py/a"), False)
    check("get of a deleted key", c.get("/py/a"), (None, None))
    deleted = c.delete("/py/b", prev_kv=True, return_response=True)
    check("delete with prev_kv", [kv.value for kv in deleted.prev_kvs], [b"x"])


def prefix_and_range(c):
    for i in range(5):
        c.put("/py/p/%d" % i, str(i))
    got = [(m.key, v) for v, m in c.get_prefix("/py/p/")]
    check("get_prefix", got, [(b"/py/p/%d" % i, b"%d" % i) for i in range(5)])
    got = [m.key for _, m in c.get_prefix("/py/p/", sort_order="descend")]
    check("get_prefix descending", got, [b"/py/p/%d" % i for i in reversed(range(5))])
    got = [v for v, _ in c.get_range("/py/p/1", "/py/p/3")]
    check("get_range", got, [b"1", b"2"])
    got = [v for v, _ in c.get_prefix("/py/p/", keys_only=True)]
    check("keys_only has no values", set(got), {b""})
    all_keys = [m.key for _, m in c.get_all()]
    check("get_all sees the prefix", all_keys[-5:], [b"/py/p/%d" % i for i in range(5)])
    resp = c.delete_prefix("/py/p/")
    check("delete_prefix", resp.deleted, 5)
    check("prefix empty after delete", list(c.get_prefix("/py/p/")), [])


def txn(c):
    c.put("/py/t", "v1")
    t = c.transactions
    ok, responses = c.transaction(
        compare=[t.value("/py/t") == "v1", t.version("/py/t") > 0],
        success=[t.put("/py/t", "v2"), t.get("/py/t")],
        failure=[t.put("/py/t", "failed")],
    )
    check("txn succeeded", ok, True)
    check("txn get sees the put of the same txn", [v for v, _ in responses[1]], [b"v2"])
    ok, _ = c.transaction(
        compare=[t.value("/py/t") == "v1"],
        success=[t.put("/py/t", "nope")],
        failure=[t.delete("/py/t")],
    )
    check("txn failed", ok, False)
    check("failure branch ran", c.get("/py/t")[0], None)
    c.put("/py/cas", "a")
    check("replace with the right value", c.replace("/py/cas", "a", "b"), True)
    check("replace with a stale value", c.replace("/py/cas", "a", "c"), False)
    check("value after replace", c.get("/py/cas")[0], b"b")


def lease(c):
    lease = c.lease(ttl=30)
    c.put("/py/l", "x", lease=lease)
    check("lease sees its key", lease.keys, [b"/py/l"])
    check("granted ttl", lease.granted_ttl, 30)
    remaining = lease.remaining_ttl
    if not 0 < remaining <= 30:
        raise AssertionError("remaining ttl %r" % remaining)
    print("ok remaining ttl", remaining)
    refreshed = lease.refresh()
    check("keep-alive answer", refreshed[0].TTL, 30)
    lease.revoke()
    check("revoke deletes the key", c.get("/py/l"), (None, None))
    short = c.lease(ttl=2)
    c.put("/py/short", "x", lease=short)
    deadline = time.time() + 15
    while c.get("/py/short")[0] is not None:
        if time.time() > deadline:
            raise AssertionError("a 2 s lease never expired")
        time.sleep(0.2)
    print("ok lease expired")


def watch(c):
    # etcd3 opens the watch on its own thread, so the create may land after the writes: the
    # watch starts just after a revision taken before them and replays what it missed.
    before = c.put("/py/w-mark", "x").header.revision
    events, cancel = c.watch("/py/w", start_revision=before + 1)
    writer = threading.Thread(target=lambda: [c.put("/py/w", str(i)) for i in range(3)])
    writer.start()
    got = []
    for event in events:
        got.append(event.value)
        if len(got) == 3:
            break
    cancel()
    writer.join()
    check("watch sees every put in order", got, [b"0", b"1", b"2"])
    c.delete("/py/w")
    first = c.put("/py/wh", "a").header.revision
    c.put("/py/wh", "b")
    c.delete("/py/wh")
    events, cancel = c.watch_prefix("/py/wh", start_revision=first)
    got = []
    for event in events:
        got.append((type(event).__name__, event.value))
        if len(got) == 3:
            break
    cancel()
    want = [("PutEvent", b"a"), ("PutEvent", b"b"), ("DeleteEvent", b"")]
    check("watch_prefix from an old revision replays history", got, want)
    timer = threading.Timer(0.5, lambda: c.put("/py/once", "now"))
    timer.start()
    event = c.watch_once("/py/once", timeout=10)
    check("watch_once", event.value, b"now")
    seen = []
    done = threading.Event()

    def callback(response):
        seen.extend(e.value for e in response.events)
        if len(seen) >= 2:
            done.set()

    before = c.put("/py/cb-mark", "x").header.revision
    watch_id = c.add_watch_prefix_callback("/py/cb/", callback, start_revision=before + 1)
    c.put("/py/cb/1", "x")
    c.put("/py/cb/2", "y")
    done.wait(10)
    c.cancel_watch(watch_id)
    check("watch callback", seen[:2], [b"x", b"y"])


def lock(c, other):
    with c.lock("py-lock", ttl=10) as held:
        check("lock acquired", held.is_acquired(), True)
        contender = other.lock("py-lock", ttl=10)
        check("a second holder times out", contender.acquire(timeout=1), False)
    check("released on exit", held.is_acquired(), False)
    contender = other.lock("py-lock", ttl=10)
    check("acquired once free", contender.acquire(timeout=5), True)
    contender.release()


def cluster(c, endpoints):
    members = list(c.members)
    check("member count", len(members), len(endpoints))
    urls = sorted(u for m in members for u in m.client_urls)
    scheme = "https://" if os.environ.get("ETCD3_CA") else "http://"
    check("member client urls", urls, sorted(scheme + e for e in endpoints))
    status = c.status()
    check("status version", status.version, "3.6.0")
    if status.leader is None or status.leader.id not in [m.id for m in members]:
        raise AssertionError("status names no member as leader: %r" % status.leader)
    print("ok status leader")
    check("no alarms", list(c.list_alarms()), [])
    nospace = etcd3.etcdrpc.NOSPACE
    raised = [(a.alarm_type, a.member_id) for a in c.create_alarm()]
    check("create_alarm answers the alarm raised", raised, [(nospace, 0)])
    check("list_alarms", [(a.alarm_type, a.member_id) for a in c.list_alarms()], [(nospace, 0)])
    disarmed = [(a.alarm_type, a.member_id) for a in c.disarm_alarm()]
    check("disarm_alarm answers the alarm disarmed", disarmed, [(nospace, 0)])
    check("no alarms after disarm", list(c.list_alarms()), [])
    revision = c.put("/py/compact", "x").header.revision
    c.compact(revision)
    check("readable after compaction", c.get("/py/compact")[0], b"x")
    events, cancel = c.watch_prefix("/py/compact", start_revision=1)
    try:
        raise AssertionError("watch below the compaction yielded %r" % next(events))
    except etcd3.exceptions.RevisionCompactedError as e:
        check("watch below the compaction is canceled", e.compacted_revision, revision)
    c.defragment()
    print("ok defragment")
    if c.hash() == 0:
        raise AssertionError("hash of a non-empty store is 0")
    print("ok hash")


def main():
    endpoints = sys.argv[1:]
    clients = [connect(e) for e in endpoints]
    c = clients[0]
    steps = [
        ("kv", lambda: kv(c)),
        ("prefix_and_range", lambda: prefix_and_range(c)),
        ("txn", lambda: txn(c)),
        ("lease", lambda: lease(c)),
        ("watch", lambda: watch(c)),
        ("lock", lambda: lock(c, clients[-1])),
        ("cluster", lambda: cluster(c, endpoints)),
    ]
    wanted = [s for s in os.environ.get("ETCD3_STEPS", "").split(",") if s]
    for name, step in steps:
        if not wanted or name in wanted:
            step()
    # No close(): etcd3's watch thread reconnects forever and prints a traceback when its
    # channel is closed under it; the process exit ends it quietly.
    print("all etcd3 checks passed", flush=True)


if __name__ == "__main__":
    main()
