"""kvs for Python against a dict in the same process, against redis-py to a
local redis-server over a Unix socket, and in memory against 10 processes
each holding a dict, all in the same run on the same keys:

    PYTHONPATH=build/python python3 bench/python/python_bench.py \
        --kvsd build/kvsd --mock build/tests/kvs_mock_kafka [--keys 1000000] [--rounds 3]

1,000,000 keys of 16 bytes with 100-byte values, in a table that kvsd (on
the mock cluster, 32 partitions) filled: the table is another process's.
A get is timed in a plain Python loop over random present keys (the loop
costs the same on both sides): table.get (bytes, a guard of its own),
r.get in a guard (memoryview, one guard per 1,000 gets) and dict.get.
Targets: <= 3x dict; >= 30x faster than redis-py; 10 reader processes
<= 1/10 the PSS of 10 processes holding a dict.
"""
import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bindings", "python",
                                "tests"))
import kvs  # noqa: E402
from harness import Kvsd, MockKafka, wait_until  # noqa: E402


def key(i):
    return b"k%015d" % i


def value(i):
    return b"%0100d" % (i * 7919)


def produce(bootstrap, topic, n):
    """Through kcat (librdkafka): fast enough for a million records."""
    with tempfile.NamedTemporaryFile("wb", delete=False) as f:
        for i in range(n):
            f.write(key(i) + b"\t" + value(i) + b"\n")
        path = f.name
    subprocess.run(["kcat", "-P", "-b", bootstrap, "-t", topic, "-K", "\t", "-l", path,
                    "-X", "linger.ms=20", "-X", "batch.num.messages=10000"], check=True)
    os.unlink(path)


def per_get_ns(fn, keys):
    t0 = time.perf_counter_ns()
    for k in keys:
        fn(k)
    return (time.perf_counter_ns() - t0) / len(keys)


def guarded_ns(table, keys):
    t0 = time.perf_counter_ns()
    for i in range(0, len(keys), 1000):
        with table.read() as r:
            get = r.get
            for k in keys[i:i + 1000]:
                get(k)
    return (time.perf_counter_ns() - t0) / len(keys)


def redis_ns(n, keys, table):
    """Medians of 5 alternated measurements: redis-py's GET, then table.get."""
    d = tempfile.mkdtemp(prefix="kvs-redis-")
    sock = os.path.join(d, "redis.sock")
    server = subprocess.Popen(["redis-server", "--port", "0", "--unixsocket", sock, "--save", "",
                               "--appendonly", "no", "--dir", d], stdout=subprocess.DEVNULL)
    try:
        import redis
        assert wait_until(lambda: os.path.exists(sock), 10)
        r = redis.Redis(unix_socket_path=sock)
        assert wait_until(lambda: r.ping(), 10)
        pipe = r.pipeline(transaction=False)
        for i in range(n):
            pipe.set(key(i), value(i))
            if i % 10000 == 9999:
                pipe.execute()
        pipe.execute()
        rs, ks = [], []
        for _ in range(5):
            rs.append(per_get_ns(r.get, keys))
            ks.append(per_get_ns(table.get, keys))
        return sorted(rs)[2], sorted(ks)[2]
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(d, ignore_errors=True)


def pss_kib(pid):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


CHILD = r"""
import sys, kvs
mode, n, prefix = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if mode == "dict":
    d = {b"k%015d" % i: b"%0100d" % (i * 7919) for i in range(n)}
    assert len(d) == n
else:
    t = kvs.Table.open("t", shm_prefix=prefix, handover=kvs.HANDOVER_NEVER)
    get = t.get
    assert all(get(b"k%015d" % i) is not None for i in range(n))  # every entry touched
print("ready", flush=True)
sys.stdin.readline()
"""


def memory(mode, n, prefix, procs=10):
    children = [subprocess.Popen([sys.executable, "-c", CHILD, mode, str(n), prefix],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                for _ in range(procs)]
    for c in children:
        assert c.stdout.readline().strip() == "ready"
    total = sum(pss_kib(c.pid) for c in children)
    for c in children:
        c.stdin.close()
        c.wait(60)
    return total / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kvsd", required=True)
    ap.add_argument("--mock", required=True)
    ap.add_argument("--keys", type=int, default=1000000)
    ap.add_argument("--gets", type=int, default=500000)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    os.environ["KVS_PY_KVSD"], os.environ["KVS_PY_MOCK_KAFKA"] = a.kvsd, a.mock
    kafka = MockKafka()
    d = Kvsd(kafka, partitions=32, capacity=2 * a.keys, memory_bytes=256 << 20)
    try:
        produce(kafka.bootstrap, d.topic, a.keys)
        table = kvs.Table.open("t", shm_prefix=d.prefix, handover=kvs.HANDOVER_NEVER)
        assert wait_until(lambda: len(table) == a.keys, 300), len(table)
        rng = random.Random(42)
        keys = [key(rng.randrange(a.keys)) for _ in range(a.gets)]
        local = {key(i): value(i) for i in range(a.keys)}
        print(f"python_bench: {a.keys} keys (16-byte keys, 100-byte values), {a.gets} random gets "
              f"per measurement, Python {sys.version.split()[0]}")
        for r in range(a.rounds):
            dict_ns = per_get_ns(local.get, keys)
            get_ns = per_get_ns(table.get, keys)
            view_ns = guarded_ns(table, keys)
            print(f"round {r + 1}: dict.get {dict_ns:.1f} ns; table.get {get_ns:.1f} ns = "
                  f"{get_ns / dict_ns:.2f}x; r.get (view) {view_ns:.1f} ns = "
                  f"{view_ns / dict_ns:.2f}x (target <= 3x)")
        rk = keys[:20000]
        try:
            import redis  # noqa: F401
        except ImportError:
            redis = None
        if redis is None or shutil.which("redis-server") is None:
            print("redis-py baseline skipped: apt-get install redis-server python3-redis")
            rns = kns = 1.0
        else:
            rns, kns = redis_ns(a.keys, rk, table)
        print(f"redis-py GET over a Unix socket {rns:.0f} ns; table.get {kns:.1f} ns (medians of "
              f"5, alternated): kvs {rns / kns:.0f}x faster (target >= 30x)")
        del local
        table.close()
        kvs_mib = memory("kvs", a.keys, d.prefix)
        dict_mib = memory("dict", a.keys, d.prefix)
        print(f"PSS of 10 processes: reading the table {kvs_mib:.0f} MiB, each holding a dict "
              f"{dict_mib:.0f} MiB: {kvs_mib / dict_mib:.3f}x (target <= 0.1x)")
    finally:
        d.close()
        kafka.close()


if __name__ == "__main__":
    main()
