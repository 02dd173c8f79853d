"""kvs for Python against a live kvsd on the mock cluster: what kvsd and an
independent Kafka producer wrote is read back, views end with their guard,
readers on several threads, kvsd killed and restarted while reads go on,
a table that grows while a guard is held, and errors as exceptions."""
import os
import signal
import threading
import unittest

import kvs
from harness import Kvsd, MockKafka, wait_until


class BindingTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.kafka = MockKafka()

    @classmethod
    def tearDownClass(cls):
        cls.kafka.close()

    def setUp(self):
        self.kvsd = Kvsd(self.kafka)
        self.addCleanup(self.kvsd.close)
        self.client = kvs.Client(self.kvsd.socket)
        self.addCleanup(self.client.close)
        self.table = kvs.Table.open("t", shm_prefix=self.kvsd.prefix,
                                    handover=kvs.HANDOVER_NEVER)
        self.addCleanup(self.table.close)
        self.table.wait_ready(30)

    def test_reads_what_kvsd_and_an_independent_producer_wrote(self):
        tok = self.client.put("t", b"flag", b"on", visible=True)
        self.assertIsInstance(tok, kvs.Token)
        self.assertEqual(self.table.get(b"flag"), b"on")
        self.assertEqual(self.table.get("flag"), b"on")  # str keys are their UTF-8
        self.assertEqual(self.table[b"flag"], b"on")
        self.assertIsNone(self.table.get(b"absent"))
        self.assertEqual(self.table.get(b"absent", b"dflt"), b"dflt")
        with self.assertRaises(KeyError):
            self.table[b"absent"]
        # Binary, non-UTF-8 keys and an empty value, from kafka-python (Java's
        # partitioner: the key lands where kvsd would put it).
        from kafka import KafkaProducer
        producer = KafkaProducer(bootstrap_servers=self.kafka.bootstrap)
        binary = b"\xff\x00\xfe-key"
        producer.send(self.kvsd.topic, key=binary, value=b"")
        producer.send(self.kvsd.topic, key=b"big", value=b"x" * 100000)
        producer.flush()
        producer.close()
        self.assertTrue(wait_until(lambda: self.table.get(b"big") is not None))
        self.assertEqual(self.table.get(binary), b"")
        self.assertEqual(self.table.get(b"big"), b"x" * 100000)  # beyond the stack buffer
        self.assertEqual(self.table.get_many([b"flag", b"absent", binary]), [b"on", None, b""])
        self.assertEqual(dict(self.table.items()),
                         {b"flag": b"on", binary: b"", b"big": b"x" * 100000})
        self.assertEqual(len(self.table), 3)
        self.assertIn(b"flag", self.table)
        self.assertEqual(sorted(self.table), sorted([b"flag", binary, b"big"]))
        s = self.table.stats()
        self.assertEqual(s.entries, 3)
        self.assertEqual(s.partitions, 4)
        # Deletes, batches and tokens.
        self.client.delete("t", b"flag", visible=True)
        self.assertIsNone(self.table.get(b"flag"))
        results = self.client.batch("t", [(b"a", b"1"), (b"b", None)], visible=True)
        self.assertEqual([type(r) for r in results], [kvs.Token, kvs.Token])
        self.assertEqual(self.table.get(b"a"), b"1")
        tok = self.client.put("t", b"later", b"v")
        self.table.wait(tok, 10)
        self.assertEqual(self.table.get(b"later"), b"v")

    def test_errors_are_exceptions_with_kvs_codes(self):
        with self.assertRaises(kvs.NoTable) as e:
            kvs.Table.open("nosuch", shm_prefix=self.kvsd.prefix, handover=kvs.HANDOVER_NEVER)
        self.assertEqual(e.exception.code, -2)
        self.assertIn("does not exist", e.exception.message)
        with self.assertRaises(kvs.InvalidArgument):
            self.client.put("nosuch", b"k", b"v")
        with self.assertRaises(kvs.TooBig):
            self.client.put("t", b"k", b"v" * 2000000)
        with self.assertRaises(kvs.ConnectionFailed):
            kvs.Client(self.kvsd.dir + "/no.sock")
        self.assertTrue(issubclass(kvs.NoTable, kvs.Error))

    def test_views_end_with_their_guard(self):
        self.client.put("t", b"k", b"value", visible=True)
        with self.table.read() as r:
            v = r.get(b"k")
            self.assertIsInstance(v, memoryview)
            self.assertTrue(v.readonly)
            self.assertEqual(bytes(v), b"value")
            self.assertIsNone(r.get(b"absent"))
        with self.assertRaises(ValueError):
            bytes(v)  # released with the guard: never a read of reused memory
        with self.assertRaises(ValueError):
            r.get(b"k")
        # A view exported further keeps the guard open until it is released.
        r = self.table.read()
        v = r.get(b"k")
        inner = memoryview(v)
        with self.assertRaises(BufferError):
            r.end()
        self.assertEqual(bytes(inner), b"value")  # still pinned, still valid
        inner.release()
        r.end()
        with self.assertRaises(ValueError):
            v[0]
        # A guard belongs to its thread.
        r = self.table.read()
        errors = []
        t = threading.Thread(target=lambda: errors.append(self._catch(lambda: r.get(b"k"))))
        t.start()
        t.join()
        self.assertIsInstance(errors[0], RuntimeError)
        r.end()

    @staticmethod
    def _catch(fn):
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - the test looks at it
            return e
        return None

    def test_readers_on_several_threads_while_kvsd_writes(self):
        self.client.batch("t", [(b"k%d" % i, b"v%d" % i) for i in range(200)], visible=True)
        stop = threading.Event()
        bad = []

        def read():
            while not stop.is_set():
                with self.table.read() as r:
                    for i in range(0, 200, 7):
                        v = r.get(b"k%d" % i)
                        if v is None or not bytes(v).startswith(b"v"):
                            bad.append((i, v and bytes(v)))
        threads = [threading.Thread(target=read) for _ in range(4)]
        for t in threads:
            t.start()
        for round_ in range(20):
            self.client.batch("t", [(b"k%d" % i, b"v%d-%d" % (i, round_)) for i in range(200)])
        self.client.put("t", b"done", b"1", visible=True)
        stop.set()
        for t in threads:
            t.join()
        self.assertEqual(bad, [])

    def test_kvsd_killed_and_restarted_while_reads_go_on(self):
        self.client.put("t", b"k", b"before", visible=True)
        self.client.close()
        self.kvsd.kill(signal.SIGKILL)
        self.assertEqual(self.table.get(b"k"), b"before")  # what it has, while kvsd is gone
        self.kvsd.start()
        client = kvs.Client(self.kvsd.socket)
        self.addCleanup(client.close)
        client.put("t", b"k", b"after", visible=True)
        self.assertEqual(self.table.get(b"k"), b"after")

    def test_a_table_that_grows_while_a_guard_is_held(self):
        self.client.put("t", b"pinned", b"old", visible=True)
        capacity = self.table.stats().capacity
        with self.table.read() as r:
            v = r.get(b"pinned")
            n = capacity + 1000
            for base in range(0, n, 1000):
                ops = [(b"g%d" % i, b"x") for i in range(base, min(n, base + 1000))]
                self.client.batch("t", ops, visible=True)
            self.client.put("t", b"pinned", b"new", visible=True)
            self.assertEqual(bytes(v), b"old")  # the guard's segment stays
        self.assertGreater(self.table.stats().capacity, capacity)
        self.assertEqual(self.table.get(b"pinned"), b"new")
        self.assertEqual(len(self.table), capacity + 1001)

    def test_a_watch_sees_every_change_of_a_prefix(self):
        with self.table.watch(prefix=b"flags/") as w:
            self.assertIsNone(w.next(0))
            self.client.put("t", b"other", b"x")
            for i in range(20):
                self.client.put("t", b"flags/%d" % i, b"on")
            self.client.delete("t", b"flags/3", visible=True)
            seen = []
            for c in w:
                seen.append((c.kind, c.key))
                if len(seen) == 21:
                    break
        # Every change, and in order where order is kept: within a partition
        # (a key's put before its delete).
        self.assertEqual(sorted(seen), sorted([("put", b"flags/%d" % i) for i in range(20)] +
                                              [("delete", b"flags/3")]))
        self.assertLess(seen.index(("put", b"flags/3")), seen.index(("delete", b"flags/3")))
        with self.table.watch(key=b"one") as w:
            tok = self.client.put("t", b"one", b"1")
            c = w.next(10)
            self.assertEqual((c.kind, c.key, c.token), ("put", b"one", tok))
            self.assertFalse(c.lost)

    def test_a_guard_held_across_fork(self):
        # As in C: the child does not inherit the parent's guard (using it
        # raises, never reads unprotected), reads with guards of its own, and
        # the parent's guard still holds.
        self.client.put("t", b"k", b"v", visible=True)
        r = self.table.read()
        v = r.get(b"k")
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                try:
                    r.get(b"k")
                    code = 1
                except kvs.Error:
                    pass
                if self.table.get(b"k") != b"v":
                    code = 2
                with self.table.read() as g:
                    if bytes(g.get(b"k")) != b"v":
                        code = 3
            except BaseException:  # noqa: BLE001 - reported through the exit code
                code = 4
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        self.assertEqual(os.waitstatus_to_exitcode(status), 0)
        self.assertEqual(bytes(v), b"v")
        r.end()

    def test_a_watch_from_asyncio(self):
        import asyncio

        async def main():
            w = self.table.watch(prefix=b"async/")
            seen = []

            async def consume():
                async for c in w:
                    seen.append(c.key)
                    if len(seen) == 5:
                        return
            task = asyncio.create_task(consume())
            await asyncio.sleep(0)  # the watch is open before the writes
            await asyncio.to_thread(lambda: [self.client.put("t", b"async/%d" % i, b"v")
                                             for i in range(5)])
            await asyncio.wait_for(task, 30)
            w.close()
            return seen
        self.assertEqual(sorted(asyncio.run(main())), sorted(b"async/%d" % i for i in range(5)))


if __name__ == "__main__":
    unittest.main()
