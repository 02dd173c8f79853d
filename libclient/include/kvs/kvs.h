/*
 * libkvs — zero-copy reads of a kvs table from shared memory.
 *
 * kvsd keeps a compacted Kafka topic as a hash table in POSIX shared memory
 * (/dev/shm/kvs.<table>). libkvs maps that table read-only and looks keys up
 * in place: no syscall, no copy and no lock on the read path.
 *
 *   kvs_table *t;
 *   if (kvs_open("flags", NULL, &t) != 0) { puts(kvs_last_error()); return 1; }
 *   kvs_txn *txn;
 *   kvs_read_begin(t, &txn);
 *   const void *v; size_t vlen;
 *   if (kvs_get(txn, "checkout.v2", 11, &v, &vlen) == 0)
 *     fwrite(v, 1, vlen, stdout);        // v points into shared memory
 *   kvs_read_end(txn);                   // v is invalid from here on
 *   kvs_close(t);
 *
 * Threads and lifetimes
 *  - A kvs_table may be used from any number of threads at once.
 *  - A kvs_txn (read guard) belongs to the thread that began it. Beginning a
 *    read on a table that already has one open in this thread returns the same
 *    guard and counts nesting; each kvs_read_begin needs one kvs_read_end.
 *  - Every pointer a read returns points into shared memory, is valid until
 *    the kvs_read_end() that closes the outermost guard, and must not be
 *    written (the mapping is read-only: a write crashes the process).
 *  - Hold guards briefly: while one is open, kvsd cannot reuse memory that the
 *    guard may still see. A process that dies holding a guard stops delaying
 *    reuse within milliseconds (kvsd sees the kernel drop its file lock), in
 *    any pid namespace, with or without /proc.
 *  - Each thread reading a table holds one reader slot, from its first read
 *    until it exits (not only while a guard is open). The slots live in a
 *    file of this process's in /dev/shm/<prefix><table>.readers/, which needs
 *    one file descriptor per table, and which kvs_close() removes.
 *  - fork(): the child gets reader files of its own at its first read. A
 *    guard open across fork() is not valid in the child: the child must not
 *    use views from it (it may call kvs_read_end on it, which does nothing).
 *  - Keys and values are arbitrary bytes. Values have no alignment guarantee.
 *  - A table handle must outlive its guards; kvs_close() with a guard still
 *    open is a bug.
 *
 * Errors: functions return 0 or a negative KVS_E* code. kvs_strerror() names
 * the code; kvs_last_error() gives this thread's detailed message for the last
 * failure (which file, which value, what to do).
 */
#ifndef KVS_KVS_H
#define KVS_KVS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(KVS_BUILDING_LIBRARY)
#define KVS_API __attribute__((visibility("default")))
#else
#define KVS_API
#endif

#define KVS_VERSION_MAJOR 0
#define KVS_VERSION_MINOR 1

/* Return codes. "retriable" means the same call may succeed later. */
#define KVS_OK 0
#define KVS_ENOTFOUND (-1) /* key not in the table (not a failure) */
#define KVS_ENOTABLE (-2)  /* no such table segment; retriable: kvsd may be starting */
#define KVS_ELAYOUT (-3)   /* segment has another layout version; not retriable: upgrade */
#define KVS_ECORRUPT (-4)  /* segment fails its checks; not retriable until kvsd rebuilds it */
#define KVS_EACCES (-5)    /* no permission for the segment; not retriable: fix group */
#define KVS_EINVAL (-6)    /* invalid argument; not retriable */
#define KVS_ETIMEDOUT (-7) /* a wait ran out; retriable */
#define KVS_EREADERS (-8)  /* reserved (layout 1: reader registry full); not returned */
#define KVS_ERANGE (-9)    /* buffer too small; *value_len holds the size needed */
#define KVS_EFULL (-10)    /* table or arena full (writer side); retriable after deletes */
#define KVS_ETOOBIG (-11)  /* key or value over the configured limit; not retriable */
#define KVS_EBUSY \
  (-12) /* another writer holds the table, or kvsd is at max_connections; retriable */
#define KVS_ESYS (-13)    /* other operating-system error; see kvs_last_error() */
#define KVS_ENOMEM (-14)  /* out of process memory; retriable */
#define KVS_ENOTSUP (-15) /* the other side (kvsd, Kafka) does not support the operation */
#define KVS_EPROTO (-16)  /* malformed frame or protocol mismatch; not retriable */
#define KVS_EQUEUE (-17)  /* kvsd's producer queue stayed full until the timeout; retriable */
#define KVS_ECONN (-18)   /* cannot reach kvsd, or the connection broke; retriable */
#define KVS_EKAFKA (-19)  /* Kafka refused the write (see kvs_last_error()); not retriable */

/* Table states (kvs_state). */
#define KVS_STATE_BOOTSTRAPPING 1 /* kvsd is still catching up with the topic */
#define KVS_STATE_READY 2         /* caught up with the high watermarks seen at start */
/* The state is what kvsd last set: if kvsd dies, a READY table stays READY
 * (and readers keep reading it) until the next kvsd attaches and turns it
 * BOOTSTRAPPING while it catches up. Whether kvsd runs is what its socket
 * (kvsctl stats) and the lag (kvs_partition_offsets) tell. */

typedef struct kvs_table kvs_table; /* an open table; opaque */
typedef struct kvs_txn kvs_txn;     /* a read guard; opaque, per thread */

typedef struct kvs_open_options {
  /* Shared-memory name prefix: the table lives at /dev/shm/<prefix><name>.
   * NULL means "kvs." (the default of kvsd). */
  const char *shm_prefix;
  /* Directory of the table segments: the one kvsd's `shm_dir` names (a
   * tmpfs mounted into the reader's container, for instance). NULL means
   * the environment variable KVS_SHM_DIR if it is set and not empty, else
   * /dev/shm. Must be an absolute path. */
  const char *shm_dir;
  /* kvsd's socket, asked for the table when it cannot be opened from
   * shm_dir (see `handover`). NULL means the environment variable
   * KVS_SOCKET if it is set and not empty, else "/run/kvs/kvsd.sock". */
  const char *socket_path;
  /* How the table is found: KVS_HANDOVER_AUTO (0) opens it from shm_dir and,
   * if it is not there or its owner is not one this process can trust (a
   * container with its own /dev/shm, a user namespace), asks kvsd's socket
   * for its descriptors; KVS_HANDOVER_NEVER only opens shm_dir;
   * KVS_HANDOVER_ALWAYS only asks the socket. With 0, the environment
   * variable KVS_HANDOVER ("auto", "never", "always") decides if it is set.
   * A table handed over reads exactly as one opened by name: zero-copy, no
   * system call per read; it follows growth and rebuilds (asking kvsd again)
   * and keeps reading what it has while kvsd is down. kvsd decides who may
   * be handed a table (its reader_uids, reader_gids and the segments'
   * group): KVS_EACCES names the refusal. */
  int handover;
} kvs_open_options;

#define KVS_HANDOVER_AUTO 0
#define KVS_HANDOVER_NEVER 1
#define KVS_HANDOVER_ALWAYS 2

/* Opens table `name` (1..200 bytes of [A-Za-z0-9._-]).
 * Errors: KVS_ENOTABLE (kvsd has not created it yet), KVS_ELAYOUT,
 * KVS_ECORRUPT, KVS_EACCES, KVS_EINVAL, KVS_ESYS, KVS_ENOMEM.
 * On success *out is a handle to release with kvs_close(). */
KVS_API int kvs_open(const char *name, const kvs_open_options *options, kvs_table **out);

/* Closes the table; all its guards must have ended. NULL is a no-op. */
KVS_API void kvs_close(kvs_table *table);

/* Begins a read: pins the memory that later reads see until kvs_read_end().
 * Cost: a thread-local lookup and one atomic exchange; no syscall (but for a
 * thread's first read of a table, which may create this process's reader
 * file). A reader that cannot register is refused, never left unprotected.
 * Errors: KVS_EACCES (may not create a file in the table's registry: join the
 * table's group), KVS_ESYS (no file descriptor left: raise RLIMIT_NOFILE),
 * KVS_ENOMEM (/dev/shm or process memory full), KVS_ENOTABLE (kvsd removed
 * the registry). All are retriable once the cause is gone. */
KVS_API int kvs_read_begin(kvs_table *table, kvs_txn **out);

/* Ends the guard begun by kvs_read_begin (nested guards: the outermost end
 * releases). Every pointer obtained through the guard becomes invalid. */
KVS_API void kvs_read_end(kvs_txn *txn);

/* Looks `key` up. On 0, *value and *value_len describe the value in shared memory
 * (valid until kvs_read_end, read-only); an empty value has *value_len == 0.
 * value and value_len may be NULL to only test presence.
 * Errors: KVS_ENOTFOUND, KVS_EINVAL (NULL txn, or key NULL with key_len > 0),
 * KVS_ECORRUPT (the probe found an entry outside the segment). */
KVS_API int kvs_get(kvs_txn *txn, const void *key, size_t key_len, const void **value,
                    size_t *value_len);

/* Looks up `count` keys at once, overlapping their memory accesses, which
 * costs less than `count` kvs_get calls. results[i] is what kvs_get would
 * return for keys[i]; values[i]/value_lens[i] are set where results[i] == 0.
 * Returns 0, or KVS_EINVAL for bad arguments. */
KVS_API int kvs_multi_get(kvs_txn *txn, size_t count, const void *const *keys,
                          const size_t *key_lens, const void **values, size_t *value_lens,
                          int *results);

/* Copies the value of `key` into buf (no guard needed). *value_len receives
 * the value's length in every case but KVS_ENOTFOUND. Errors: KVS_ENOTFOUND,
 * KVS_ERANGE (buf_len < *value_len; nothing copied), KVS_EINVAL, and those of
 * kvs_read_begin. */
KVS_API int kvs_get_copy(kvs_table *table, const void *key, size_t key_len, void *buf,
                         size_t buf_len, size_t *value_len);

/* Calls fn for every entry, in no particular order, until fn returns non-zero
 * (which kvs_for_each then returns). Weakly consistent: entries are never
 * torn, but a key written during the walk may be missed, and a key erased and
 * written again during it may be seen twice. Pointers are valid until
 * kvs_read_end. Errors: KVS_EINVAL, KVS_ECORRUPT. */
KVS_API int kvs_for_each(kvs_txn *txn,
                         int (*fn)(void *ctx, const void *key, size_t key_len, const void *value,
                                   size_t value_len),
                         void *ctx);

/* Number of entries (exact when kvsd is idle); 0 for a NULL table. Reads the
 * segment's header: needs no guard and no reader slot, so it cannot fail. */
KVS_API uint64_t kvs_size(kvs_table *table);

/* KVS_STATE_BOOTSTRAPPING or KVS_STATE_READY; KVS_EINVAL for a NULL table.
 * Needs no guard and no reader slot. */
KVS_API int kvs_state(kvs_table *table);

/* Waits until the table is READY. timeout_ms < 0 waits forever.
 * Errors: KVS_ETIMEDOUT. */
KVS_API int kvs_wait_ready(kvs_table *table, int timeout_ms);

/* Number of Kafka partitions the table follows (0 until kvsd knows, or for a
 * NULL table). Needs no guard and no reader slot. */
KVS_API uint32_t kvs_partition_count(kvs_table *table);

/* Per partition: *next_offset is one past the last offset applied to the
 * table (Kafka's "position"), *high_watermark the last high watermark kvsd
 * saw (refreshed about once a second, never below *next_offset); their
 * difference is the lag. Errors: KVS_EINVAL (partition out of range). Either
 * output may be NULL. */
KVS_API int kvs_partition_offsets(kvs_table *table, uint32_t partition, int64_t *next_offset,
                                  int64_t *high_watermark);

/* What the segment says about itself, for monitoring (kvsctl stats). */
typedef struct kvs_table_stats {
  uint64_t entries;          /* live keys */
  uint64_t capacity;         /* keys the index is sized for */
  uint64_t arena_used_bytes; /* bytes of the arena handed out so far (freed blocks are reused) */
  uint64_t arena_bytes;      /* the arena's size (memory_limit_bytes) */
  uint64_t segment_bytes;    /* the whole data segment */
  uint64_t puts, erases;     /* applied since the segment was created */
  uint64_t skipped;          /* records kvsd could not apply (over the size limits) */
  uint64_t writer_attaches;  /* kvsd starts on this segment */
  int32_t writer_pid;        /* kvsd's pid (0: none yet) */
  /* Readers, as kvsd last counted them (about once a second): */
  uint32_t reader_slots;      /* reader files kvsd tracks at most (reader_slots in kvsd.toml) */
  uint32_t reader_slots_used; /* slots live reader processes handed to their threads */
  uint32_t readers_reading;   /* slots inside a read */
  /* Pressure, as kvsd last published it (as it applies records): */
  uint32_t held_partitions; /* partitions whose next record waits for room */
  uint32_t hold_reason;     /* KVS_HOLD_*: why, at the latest hold */
  int32_t holder_pid;       /* the reader process holding memory back from reuse longest, in its
                               own pid namespace (0: none; -1: one kvsd cannot identify) */
  uint64_t holder_since_unix_ns;     /* since when kvsd has seen it hold memory back */
  uint64_t holder_bytes;             /* arena bytes waiting for readers to finish their reads */
  uint64_t backlog;                  /* records stored in Kafka and not applied yet (sum of lags) */
  uint64_t oldest_unapplied_unix_ns; /* Kafka timestamp of the oldest record not applied yet:
                                        an upper bound on its age (0: none, or not known) */
  /* Change notification (kvs_wait*, kvs_watch_*): */
  uint32_t waiters;             /* processes kvsd wakes after each batch (they wait or watch) */
  uint64_t wakes;               /* FUTEX_WAKE calls kvsd made for this segment */
  uint64_t change_log_entries;  /* the change log's size (0: none; watches are refused) */
  uint64_t change_log_position; /* changes logged so far: the next change's position */
} kvs_table_stats;

/* kvs_table_stats.hold_reason */
#define KVS_HOLD_NONE 0
/* 1 and 2: the index or the arena is full and the table cannot grow (a
 * segment larger than the layout's bounds); a table grows instead. */
#define KVS_HOLD_CAPACITY 1 /* the index holds `capacity` keys and the record adds one */
#define KVS_HOLD_MEMORY 2   /* the arena has no room for the record */
#define KVS_HOLD_READERS 3  /* the room exists, but a reader may still see it (holder_pid) */
#define KVS_HOLD_NO_SPACE 4 /* /dev/shm (the tmpfs) has no room for more of the table */
#define KVS_HOLD_LIMIT 5    /* the table would grow past its max_memory_bytes */

/* Fills *out from the segment's header (no guard, no reader slot: works
 * whatever the registry holds). Errors: KVS_EINVAL (NULL argument). */
KVS_API int kvs_stat(kvs_table *table, kvs_table_stats *out);

/* The table's digest (docs/format.md, "The digest"). `contents` is an
 * order-independent hash of its keys and values, `digest` that hash
 * together with the applied offsets of its `partitions`: two hosts whose
 * digests are equal are at the same offsets with the same keys and values
 * (up to a 64-bit hash collision). kvsd keeps it as it applies records, so
 * reading it scans nothing; it is read between two records, with the
 * offsets it covers. Errors: KVS_EBUSY (kvsd applied records throughout
 * the read, or a restarted kvsd has not yet published the offset of a
 * record its predecessor applied; retriable), KVS_EINVAL (NULL argument). */
typedef struct kvs_digest {
  uint64_t digest;
  uint64_t contents;
  uint32_t partitions;
} kvs_digest;
KVS_API int kvs_table_digest(kvs_table *table, kvs_digest *out);

/* ---- Snapshots ---------------------------------------------------------- */

/* What kvs_snapshot_write wrote. */
typedef struct kvs_snapshot_info {
  uint64_t entries;         /* entries in the file */
  uint64_t entry_bytes;     /* their keys' and values' bytes */
  uint64_t file_bytes;      /* the file's size */
  uint64_t created_unix_ns; /* when the walk began: the file's positions are of then */
  uint64_t duration_ns;     /* how long the call took */
  uint32_t partitions;      /* partitions whose positions the file holds */
  uint32_t restarts;        /* walks begun again because kvsd replaced the table (growth) */
} kvs_snapshot_info;

/* Writes a snapshot of the table to `path` (docs/format.md, "Snapshot
 * files"): every entry with its origin, and each partition's position. kvsd
 * loads such a file at a cold start (its `seed_from` key), then applies the
 * records after the positions from Kafka: copy it to another host to start
 * that host's kvsd without reading the whole topic. Needs only read access
 * to the table: kvsd goes on applying records meanwhile, and the guard this
 * call takes is renewed for each MiB written, so it holds no memory back
 * from reuse for long. The file is written beside `path` and renamed over it
 * when complete and fsynced: a crash or a full disk leaves what was at
 * `path` as it was (but for a failed fsync of the directory after the
 * rename, which is reported: the new file is in place then, and a crash
 * may still undo the rename). `info` may be NULL. Must not be called inside
 * a read guard of the same table (the walk could not renew it).
 * Errors: KVS_EINVAL (NULL argument, or inside a guard), KVS_ESYS (the file:
 * kvs_last_error() names it and the cause, ENOSPC for a full disk),
 * KVS_EBUSY (kvsd replaced the table 9 times during the walk; retriable),
 * KVS_ETOOBIG (an entry over 63 MiB), KVS_ENOMEM, KVS_ECORRUPT, and those of
 * kvs_read_begin. */
KVS_API int kvs_snapshot_write(kvs_table *table, const char *path, kvs_snapshot_info *info);

/* ---- Watching changes --------------------------------------------------- */

/* A watch follows the table's change log (docs/format.md, "Watching a
 * table"): a ring in the segment of the latest changes kvsd applied, in the
 * order it applied them (so per partition in offset order). A watch starts
 * at the newest change: it reports what is applied after kvs_watch_open.
 * While it sleeps in kvs_watch_next, kvsd wakes it with a futex after each
 * batch it applied. A watch that falls further behind than the ring holds
 * is told so (KVS_CHANGE_LOST), never skips silently; it then goes on from
 * the newest change and the caller re-reads what it cares about. It follows
 * the table through a growth without losing its place (as long as the ring
 * holds what the growth applied meanwhile), and reports KVS_CHANGE_LOST
 * for a rebuild. A change says which key changed; read its value with
 * kvs_get (it may be newer than the change).
 *
 *   kvs_watch *w;
 *   kvs_watch_open(t, KVS_WATCH_PREFIX, "flags/", 6, &w);
 *   kvs_change c;
 *   while (kvs_watch_next(w, &c, -1) == 0) {
 *     if (c.kind == KVS_CHANGE_LOST) reload_all(); else reload(c.key, c.key_len);
 *   }
 *   kvs_watch_close(w);
 *
 * A watch belongs to one thread at a time; the table must outlive it. A
 * kvsd that restarts replays records after its last published position:
 * their changes may be reported twice. */
typedef struct kvs_watch kvs_watch; /* opaque */

#define KVS_WATCH_ALL 0    /* every change */
#define KVS_WATCH_KEY 1    /* changes of one key */
#define KVS_WATCH_PREFIX 2 /* changes of keys that start with the given bytes */

#define KVS_CHANGE_PUT 1   /* the key was written */
#define KVS_CHANGE_ERASE 2 /* the key was erased (a tombstone) */
#define KVS_CHANGE_LOST 3  /* changes were lost to this watch: re-read what you watch */

typedef struct kvs_change {
  int kind;             /* KVS_CHANGE_* */
  uint32_t partition;   /* the Kafka record's (not for KVS_CHANGE_LOST) */
  int64_t offset;       /* the record's offset: a kvs_token of {partition, offset} */
  int64_t timestamp_ms; /* the record's Kafka timestamp (0: none) */
  const void *key;      /* the key's bytes: valid until this watch's next call */
  size_t key_len;
  uint64_t position; /* the change's position in the log */
} kvs_change;

/* Opens a watch of `table` with a filter: KVS_WATCH_ALL (key ignored),
 * KVS_WATCH_KEY or KVS_WATCH_PREFIX (key, key_len: the key or prefix; an
 * empty prefix matches all). Errors: KVS_EINVAL (NULL argument, unknown
 * filter), KVS_ENOTSUP (the table has no change log: change_log_entries = 0
 * in kvsd.toml), KVS_ENOMEM, and those of kvs_open. */
KVS_API int kvs_watch_open(kvs_table *table, int filter, const void *key, size_t key_len,
                           kvs_watch **out);

/* The next change that passes the filter, waiting up to timeout_ms (< 0:
 * forever; 0: only what is there) once the log has nothing more for it
 * (reading what is there is not counted: a watch far behind may take a
 * millisecond to skip a full ring it does not want). Returns 0 with *change filled, or
 * KVS_ETIMEDOUT (nothing new; retriable), KVS_EINVAL, KVS_ENOTSUP (kvsd
 * replaced the table with one without a change log), KVS_ENOMEM. */
KVS_API int kvs_watch_next(kvs_watch *watch, kvs_change *change, int timeout_ms);

/* Ends the watch. NULL is a no-op. */
KVS_API void kvs_watch_close(kvs_watch *watch);

/* ---- Read-your-writes ------------------------------------------------- */

/* Where Kafka stored a write: the partition and the record's offset. A token
 * means the same on every host that mirrors the topic. */
typedef struct kvs_token {
  int32_t partition;
  int64_t offset;
} kvs_token;

/* Waits until `table` has applied `token` (its partition's next offset is
 * above token->offset), read from shared memory: works on any host whose kvsd
 * mirrors the topic, with read access only. timeout_ms < 0 waits forever.
 * A partition the topic gained after kvsd started is waited for too (kvsd
 * follows it within about a second). Errors: KVS_ETIMEDOUT, KVS_EINVAL (NULL
 * argument, a partition beyond what the table can track: max_partitions). */
KVS_API int kvs_wait(kvs_table *table, const kvs_token *token, int timeout_ms);

/* ---- Writes through kvsd ---------------------------------------------------
 *
 * Writes go to kvsd over its Unix socket (docs/protocol.md); kvsd produces
 * them to Kafka (acks=all, idempotent, murmur2 partitioner) and answers once
 * Kafka acknowledged them. The table shows a write once kvsd has consumed it
 * back: use the `visible` option, or kvs_wait() with the token.
 *
 *   kvs_client *c;
 *   if (kvs_connect(NULL, &c) != 0) { puts(kvs_last_error()); return 1; }
 *   kvs_write_options o = {0, 1};          // kvsd's timeout; visible
 *   kvs_token tok;
 *   int rc = kvs_put(c, "flags", "checkout.v2", 11, "on", 2, &o, &tok);
 *   kvs_disconnect(c);
 *
 * Threads: a kvs_client is used by one thread at a time (it is not locked);
 * open one per thread, or pipeline with the _async calls. Callbacks run inside
 * kvs_client_poll, kvs_client_flush or any other call on the same client, in
 * that call's thread. Errors beyond those listed: KVS_ECONN (kvsd is not
 * running, or the connection broke: reconnect), KVS_EPROTO, KVS_ENOMEM. */
typedef struct kvs_client kvs_client; /* a connection to kvsd; opaque */

typedef struct kvs_write_options {
  uint32_t timeout_ms; /* how long kvsd may take to answer; 0: its write_timeout_ms */
  int visible;         /* non-zero: answer once this host's table has applied the write */
} kvs_write_options;

/* One operation of a batch: value NULL erases key; value non-NULL with
 * value_len 0 stores an empty value. */
typedef struct kvs_write_op {
  const void *key;
  size_t key_len;
  const void *value;
  size_t value_len;
} kvs_write_op;

/* Connects to kvsd at socket_path (NULL: $KVS_SOCKET, else /run/kvs/kvsd.sock)
 * and does the handshake. Errors: KVS_ECONN (no kvsd there; retriable),
 * KVS_EACCES (kvsd refused this uid/gid), KVS_EPROTO (another protocol
 * version). On success *out is released with kvs_disconnect(). */
KVS_API int kvs_connect(const char *socket_path, kvs_client **out);

/* Closes the connection. Async writes still without an answer get their
 * callback now, with KVS_ECONN (kvsd still completes them: the write may be
 * applied). NULL is a no-op. */
KVS_API void kvs_disconnect(kvs_client *client);

/* Writes key = value to `table` and waits for kvsd's answer. options may be
 * NULL (defaults). On 0, *token (if not NULL) is where Kafka stored it.
 * Errors: KVS_ETOOBIG (key or value over the table's limits; not retriable),
 * KVS_EINVAL (no such table at this kvsd), KVS_ETIMEDOUT (not acknowledged in
 * time, or with visible not applied in time; the write may still be applied;
 * retriable), KVS_EQUEUE (retriable), KVS_EACCES, KVS_EKAFKA (Kafka refused
 * it; also when the topic was deleted: kvsd never creates it), KVS_ENOTSUP
 * (with visible: the key lands in a partition beyond the table's
 * max_partitions, which this kvsd does not apply; nothing was written). */
KVS_API int kvs_put(kvs_client *client, const char *table, const void *key, size_t key_len,
                    const void *value, size_t value_len, const kvs_write_options *options,
                    kvs_token *token);

/* Deletes key (writes a tombstone); as kvs_put. Deleting a missing key is
 * not an error. */
KVS_API int kvs_erase(kvs_client *client, const char *table, const void *key, size_t key_len,
                      const kvs_write_options *options, kvs_token *token);

/* Writes `count` operations in one request. Not a transaction: results[i]
 * (0 or a KVS_E* code) and tokens[i] tell each operation's outcome; both
 * arrays may be NULL. Returns 0 when the request was answered (check
 * results), else an error as kvs_put (KVS_ETOOBIG, or with visible
 * KVS_ENOTSUP: an operation is over the limits, or lands in a partition this
 * kvsd does not apply, and nothing was written). */
KVS_API int kvs_write_batch(kvs_client *client, const char *table, const kvs_write_op *ops,
                            size_t count, const kvs_write_options *options, int *results,
                            kvs_token *tokens);

/* Called once per async write: result is 0 or a KVS_E* code; token is valid
 * during the call when result is 0. */
typedef void (*kvs_write_cb)(void *ctx, int result, const kvs_token *token);

/* Queues the write and returns without waiting (pipelining); cb(ctx, ...)
 * runs when the answer is read. The key and value are copied before return.
 * Writes are sent in batches: once 16 KiB are queued, else by the next
 * kvs_client_poll, kvs_client_flush or synchronous call on the client; with
 * 1 MiB unsent, the call waits until kvsd takes some (backpressure).
 * Returns 0 once queued, or an error (the callback then never runs). */
KVS_API int kvs_put_async(kvs_client *client, const char *table, const void *key, size_t key_len,
                          const void *value, size_t value_len, const kvs_write_options *options,
                          kvs_write_cb cb, void *ctx);
KVS_API int kvs_erase_async(kvs_client *client, const char *table, const void *key, size_t key_len,
                            const kvs_write_options *options, kvs_write_cb cb, void *ctx);

/* Called once per async batch. result 0: kvsd answered, and results[i] (0 or
 * a KVS_E* code) and tokens[i] tell operation i's outcome, as kvs_write_batch
 * (both valid during the call). Otherwise the batch failed as a whole
 * (kvs_write_batch's errors, or KVS_ECONN) and both are NULL. */
typedef void (*kvs_batch_cb)(void *ctx, int result, size_t count, const int *results,
                             const kvs_token *tokens);

/* kvs_write_batch, pipelined as kvs_put_async: the operations are copied
 * before return; cb(ctx, ...) runs once with the outcome. A batch counts as
 * one in kvs_client_pending. Returns 0 once queued, or an error (KVS_ETOOBIG:
 * over kvsd's frame limit; the callback then never runs). */
KVS_API int kvs_write_batch_async(kvs_client *client, const char *table, const kvs_write_op *ops,
                                  size_t count, const kvs_write_options *options, kvs_batch_cb cb,
                                  void *ctx);

/* Reads the answers that have arrived (waiting up to timeout_ms for the
 * first, < 0 forever) and runs their callbacks. Returns how many ran (>= 0). */
KVS_API int kvs_client_poll(kvs_client *client, int timeout_ms);

/* Runs callbacks until no async write is outstanding. timeout_ms < 0 waits
 * as long as it takes (kvsd answers every write within its timeout).
 * Errors: KVS_ETIMEDOUT (some are still outstanding). */
KVS_API int kvs_client_flush(kvs_client *client, int timeout_ms);

/* Async writes sent whose callback has not run yet. */
KVS_API size_t kvs_client_pending(kvs_client *client);

/* Asks kvsd to answer once its copy of `table` has applied token (the same
 * as kvs_wait, for a process without read access to the segment).
 * Errors: KVS_ETIMEDOUT, KVS_EINVAL. */
KVS_API int kvs_client_wait(kvs_client *client, const char *table, const kvs_token *token,
                            int timeout_ms);

/* A round trip to kvsd. Errors: KVS_ETIMEDOUT. */
KVS_API int kvs_ping(kvs_client *client, int timeout_ms);

/* kvsd's statistics as JSON (docs/protocol.md, STATS). *json is released
 * with kvs_free(). */
KVS_API int kvs_stats(kvs_client *client, char **json);

/* Releases memory that libkvs returned. */
KVS_API void kvs_free(void *p);

/* Static text for a KVS_E* code ("unknown error" for others). */
KVS_API const char *kvs_strerror(int code);

/* This thread's detailed message for its last failed call, or "". Valid until
 * the next libkvs call in this thread. */
KVS_API const char *kvs_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* KVS_KVS_H */
