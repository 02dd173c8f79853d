"""A kvsd on the mock Kafka cluster for the binding's tests: both real
processes (tests/kvs_mock_kafka, kvsd), found through KVS_PY_MOCK_KAFKA and
KVS_PY_KVSD, or a real cluster through KVS_TEST_BOOTSTRAP."""
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid


def wait_until(fn, timeout=30.0, every=0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fn():
            return True
        time.sleep(every)
    return fn()


class MockKafka:
    def __init__(self):
        self.external = os.environ.get("KVS_TEST_BOOTSTRAP")
        self.proc = None
        if self.external:
            self.bootstrap = self.external
            return
        self.proc = subprocess.Popen([os.environ["KVS_PY_MOCK_KAFKA"]], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().split()
        assert line and line[0] == "bootstrap", line
        self.bootstrap = line[1]

    def create_topic(self, topic, partitions):
        if self.proc is None:
            from kafka.admin import KafkaAdminClient, NewTopic
            admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
            admin.create_topics([NewTopic(topic, partitions, 1,
                                          topic_configs={"cleanup.policy": "compact"})])
            admin.close()
            return
        self.proc.stdin.write(f"create {topic} {partitions}\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "ok"

    def close(self):
        if self.proc:
            self.proc.stdin.close()
            self.proc.wait(30)


class Kvsd:
    """kvsd serving table "t" of a new topic, in a directory of its own."""

    def __init__(self, kafka, partitions=4, capacity=4096, memory_bytes=4 << 20):
        self.dir = tempfile.mkdtemp(prefix="kvs-py-")
        self.topic = "kvs-py-" + uuid.uuid4().hex[:12]
        self.prefix = "kvspy" + uuid.uuid4().hex[:6] + "."
        self.socket = os.path.join(self.dir, "s.sock")
        kafka.create_topic(self.topic, partitions)
        self.config = os.path.join(self.dir, "kvsd.toml")
        with open(self.config, "w") as f:
            f.write(f'[kvsd]\nmetrics_listen = ""\nsocket_path = "{self.socket}"\nshm_prefix = "{self.prefix}"\n'
                    f'state_dir = "{self.dir}/state"\npoll_timeout_ms = 20\n'
                    f'[kafka]\n"bootstrap.servers" = "{kafka.bootstrap}"\n'
                    f'[[table]]\nname = "t"\ntopic = "{self.topic}"\n'
                    f'capacity = {capacity}\nmemory_limit_bytes = {memory_bytes}\n')
        self.log = open(os.path.join(self.dir, "kvsd.log"), "a")
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen([os.environ["KVS_PY_KVSD"], "--config", self.config],
                                     stderr=self.log)
        assert wait_until(lambda: self._listening(), 60), self.log_text()

    def _listening(self):
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(self.socket)
            return True
        except OSError:
            return False
        finally:
            s.close()

    def kill(self, sig=signal.SIGKILL):
        self.proc.send_signal(sig)
        self.proc.wait(30)

    def log_text(self):
        with open(os.path.join(self.dir, "kvsd.log")) as f:
            return f.read()

    def close(self):
        if self.proc and self.proc.poll() is None:
            self.kill(signal.SIGTERM)
        self.log.close()
        for name in os.listdir("/dev/shm"):
            if name.startswith(self.prefix):
                path = os.path.join("/dev/shm", name)
                shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
        shutil.rmtree(self.dir, ignore_errors=True)
