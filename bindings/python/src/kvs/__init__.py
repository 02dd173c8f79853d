"""kvs for Python: read a kvs table at native speed, write through kvsd.

    import kvs
    table = kvs.Table.open("flags")
    table.get(b"checkout.v2")            # bytes, or None
    with table.read() as r:              # a read guard
        view = r.get(b"checkout.v2")     # memoryview into shared memory
    client = kvs.Client()                # kvsd's socket
    client.put("flags", b"checkout.v2", b"on", visible=True)

A memoryview from a guard is valid only inside it: the guard releases it
when it ends, and using it then raises ValueError.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, NamedTuple, Optional, Sequence, Tuple, Union

from . import _kvs

__all__ = ["Table", "ReadGuard", "Client", "Token", "Stats", "Change", "Watch", "Error", "NoTable",
           "LayoutMismatch", "Corrupt", "PermissionDenied", "InvalidArgument", "Timeout",
           "TooBig", "Busy", "NotSupported", "ProtocolError", "QueueFull",
           "ConnectionFailed", "KafkaError", "HANDOVER_AUTO", "HANDOVER_NEVER",
           "HANDOVER_ALWAYS"]

HANDOVER_AUTO, HANDOVER_NEVER, HANDOVER_ALWAYS = 0, 1, 2

Key = Union[bytes, bytearray, memoryview, str]


class Error(Exception):
    """A kvs error: `code` is the KVS_E* value of kvs.h, `message` says what was wrong."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class NoTable(Error):
    """KVS_ENOTABLE: no such table yet (retriable: kvsd may be starting)."""


class LayoutMismatch(Error):
    """KVS_ELAYOUT: the segment has another layout; upgrade kvsd or libkvs."""


class Corrupt(Error):
    """KVS_ECORRUPT: the segment fails its checks."""


class PermissionDenied(Error):
    """KVS_EACCES: not allowed (join the table's group, or kvsd's reader_uids)."""


class InvalidArgument(Error):
    """KVS_EINVAL."""


class Timeout(Error):
    """KVS_ETIMEDOUT (retriable)."""


class TooBig(Error):
    """KVS_ETOOBIG: key or value over the table's limits."""


class Busy(Error):
    """KVS_EBUSY (retriable)."""


class NotSupported(Error):
    """KVS_ENOTSUP."""


class ProtocolError(Error):
    """KVS_EPROTO."""


class QueueFull(Error):
    """KVS_EQUEUE: kvsd's producer queue stayed full (retriable)."""


class ConnectionFailed(Error):
    """KVS_ECONN: kvsd cannot be reached, or the connection broke (retriable)."""


class KafkaError(Error):
    """KVS_EKAFKA: Kafka refused the write."""


_ERRORS = {
    -2: NoTable, -3: LayoutMismatch, -4: Corrupt, -5: PermissionDenied, -6: InvalidArgument,
    -7: Timeout, -11: TooBig, -12: Busy, -15: NotSupported, -16: ProtocolError,
    -17: QueueFull, -18: ConnectionFailed, -19: KafkaError,
}
_kvs._register_errors(Error, _ERRORS)

ReadGuard = _kvs.ReadGuard


class Token(NamedTuple):
    """Where Kafka stored a write: wait for it on any host (Table.wait)."""
    partition: int
    offset: int


@dataclasses.dataclass(frozen=True)
class Stats:
    """What the table's segment says about itself (kvsctl stats)."""
    entries: int
    capacity: int
    arena_used_bytes: int
    arena_bytes: int
    segment_bytes: int
    puts: int
    erases: int
    skipped: int
    writer_pid: int
    readers_reading: int
    held_partitions: int
    hold_reason: int
    backlog: int
    change_log_position: int
    waiters: int
    partitions: int
    holder_bytes: int
    wakes: int
    state: int


class Change(NamedTuple):
    """One change a watch saw. `lost`: changes were lost to the watch (it fell
    a whole change log behind, or the table was rebuilt): re-read what you
    watch. Read the value with Table.get: it may be newer than the change."""
    kind: str  # "put", "delete" or "lost"
    key: bytes
    partition: int
    offset: int
    timestamp_ms: int
    position: int

    @property
    def lost(self) -> bool:
        return self.kind == "lost"

    @property
    def token(self) -> Token:
        return Token(self.partition, self.offset)


_KINDS = {1: "put", 2: "delete", 3: "lost"}


class Watch:
    """The changes of a table (or of one key, or of keys with a prefix), in
    the order kvsd applied them. Iterate it (blocking), or `async for` it:
    the async side waits in a worker thread (asyncio.to_thread), because
    kvsd wakes watchers through a futex word in shared memory, which no
    event loop can poll as a file descriptor. One thread uses it at a time."""

    def __init__(self, native, table):
        self._w = native
        self._table = table  # must outlive the watch

    def next(self, timeout: Optional[float] = None) -> Optional[Change]:
        """The next change, or None if none came within `timeout` seconds."""
        c = self._w.next(timeout)
        return None if c is None else Change(_KINDS.get(c[0], str(c[0])), *c[1:])

    def __iter__(self):
        while True:
            c = self.next(None)
            if c is not None:
                yield c

    def __aiter__(self):
        return self

    async def __anext__(self) -> Change:
        import asyncio  # here: importing it costs a process ~10 MB it may not need

        while True:
            # Bounded waits: a cancelled task's thread returns within 0.5 s.
            c = await asyncio.to_thread(self.next, 0.5)
            if c is not None:
                return c

    def close(self) -> None:
        self._w.close()

    def __enter__(self) -> "Watch":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Table:
    """An open table: reads from shared memory, with no system call."""

    __slots__ = ("_t", "get", "read")

    def __init__(self, native):
        self._t = native
        # Bound once: a get is one call into the native module.
        self.get = native.get
        self.read = native.read

    @classmethod
    def open(cls, name: str, *, shm_prefix: Optional[str] = None,
             shm_dir: Optional[str] = None, socket: Optional[str] = None,
             handover: int = HANDOVER_AUTO) -> "Table":
        """Opens table `name` (see kvs_open_options in kvs.h for the options)."""
        return cls(_kvs.open(name, shm_prefix, shm_dir, socket, handover))

    def get_many(self, keys: Iterable[Key]) -> list:
        """The values of `keys` (bytes, or None where absent), read in one guard."""
        with self._t.read() as r:
            return [None if (v := r.get(k)) is None else bytes(v) for k in keys]

    def items(self) -> list:
        """Every (key, value) as bytes, read in one guard."""
        with self._t.read() as r:
            return [(k, bytes(v)) for k, v in r.items()]

    def __iter__(self):
        return iter([k for k, _ in self.items()])

    def __len__(self) -> int:
        return self._t.size()

    def __contains__(self, key: Key) -> bool:
        with self._t.read() as r:
            return r.get(key) is not None

    def __getitem__(self, key: Key) -> bytes:
        v = self.get(key)
        if v is None:
            raise KeyError(key)
        return v

    def watch(self, *, prefix: Optional[Key] = None, key: Optional[Key] = None) -> Watch:
        """Changes of every key, of keys starting with `prefix`, or of `key`."""
        if prefix is not None and key is not None:
            raise ValueError("watch: a prefix or a key, not both")
        if key is not None:
            return Watch(self._t._watch(1, key), self)
        if prefix is not None:
            return Watch(self._t._watch(2, prefix), self)
        return Watch(self._t._watch(0, b""), self)

    def stats(self) -> Stats:
        return Stats(**self._t._stats())

    def wait_ready(self, timeout: Optional[float] = None) -> None:
        """Waits until the table caught up with its topic (Timeout if not in time)."""
        self._t.wait_ready(timeout)

    def wait(self, token: Tuple[int, int], timeout: Optional[float] = None) -> None:
        """Waits until this host's table applied `token` (Timeout if not in time)."""
        self._t._wait(token[0], token[1], timeout)

    def close(self) -> None:
        self._t.close()

    def __enter__(self) -> "Table":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Client:
    """Writes through kvsd's socket (None: KVS_SOCKET, else /run/kvs/kvsd.sock).

    A write returns once Kafka stored it (acks=all); with visible=True, once
    this host's table applied it too.
    """

    def __init__(self, socket: Optional[str] = None):
        self._c = _kvs.connect(socket)

    def put(self, table: str, key: Key, value: Key, *, visible: bool = False,
            timeout: Optional[float] = None) -> Token:
        return Token(*self._c._put(table, key, value, visible, timeout))

    def delete(self, table: str, key: Key, *, visible: bool = False,
               timeout: Optional[float] = None) -> Token:
        return Token(*self._c._delete(table, key, visible, timeout))

    def batch(self, table: str, ops: Sequence[Tuple[Key, Optional[Key]]], *,
              visible: bool = False, timeout: Optional[float] = None) -> list:
        """Each op is (key, value), or (key, None) to delete. Not a transaction:
        returns, per op, a Token, or the Error that op met."""
        out = []
        for code, partition, offset in self._c._batch(table, ops, visible, timeout):
            out.append(Token(partition, offset) if code == 0 else
                       _ERRORS.get(code, Error)(code, f"batch operation failed with code {code}"))
        return out

    def wait(self, table: str, token: Tuple[int, int], timeout: Optional[float] = None) -> None:
        """Waits until the table on kvsd's host applied `token`."""
        self._c._wait(table, token[0], token[1], timeout)

    def close(self) -> None:
        self._c.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
