package io.kvs;

import java.util.ArrayList;
import java.util.List;

/** An open kvs table: reads from shared memory, with no system call. */
public final class Table implements AutoCloseable {
  public static final int HANDOVER_AUTO = 0;
  public static final int HANDOVER_NEVER = 1;
  public static final int HANDOVER_ALWAYS = 2;

  private long handle;

  private Table(long handle) {
    this.handle = handle;
  }

  /** Opens table {@code name} with kvsd's defaults (and KVS_SHM_DIR, KVS_SOCKET). */
  public static Table open(String name) {
    return open(name, null, null, null, HANDOVER_AUTO);
  }

  /** Opens table {@code name}; null options take their defaults (kvs_open_options in kvs.h). */
  public static Table open(String name, String shmPrefix, String shmDir, String socket,
      int handover) {
    return new Table(Native.open(name, shmPrefix, shmDir, socket, handover));
  }

  private long handle() {
    if (handle == 0) throw new IllegalStateException("the table is closed");
    return handle;
  }

  /** The value of {@code key}, copied (a guard of its own), or null. */
  public byte[] get(byte[] key) {
    return Native.getCopy(handle(), key);
  }

  /** The values of {@code keys} (null where absent), read in one guard. */
  public List<byte[]> getMany(List<byte[]> keys) {
    List<byte[]> out = new ArrayList<>(keys.size());
    try (ReadGuard g = read()) {
      for (byte[] k : keys) {
        var v = g.get(k);
        if (v == null) {
          out.add(null);
        } else {
          byte[] b = new byte[v.remaining()];
          v.get(b);
          out.add(b);
        }
      }
    }
    return out;
  }

  /** Calls {@code fn} with a copy of every key and value, read in one guard. */
  public void forEach(java.util.function.BiConsumer<byte[], byte[]> fn) {
    try (ReadGuard g = read()) {
      g.forEach((k, v) -> {
        byte[] kb = new byte[k.remaining()];
        byte[] vb = new byte[v.remaining()];
        k.get(kb);
        v.get(vb);
        fn.accept(kb, vb);
        return true;
      });
    }
  }

  /** Every change of the table. */
  public Watch watch() {
    return new Watch(Native.watchOpen(handle(), 0, new byte[0]));
  }

  /** The changes of {@code key}. */
  public Watch watchKey(byte[] key) {
    return new Watch(Native.watchOpen(handle(), 1, key));
  }

  /** The changes of keys that start with {@code prefix}. */
  public Watch watchPrefix(byte[] prefix) {
    return new Watch(Native.watchOpen(handle(), 2, prefix));
  }

  /** Begins a read guard (use it in try-with-resources). */
  public ReadGuard read() {
    return new ReadGuard(this, Native.readBegin(handle()));
  }

  public long size() {
    return Native.size(handle());
  }

  /** Waits until the table caught up with its topic (KvsException TIMED_OUT if not). */
  public void waitReady(java.time.Duration timeout) {
    Native.waitReady(handle(), (int) Math.min(Integer.MAX_VALUE, timeout.toMillis()));
  }

  /** Waits until this host's table applied {@code token} (read-your-writes on any host). */
  public void await(Token token, java.time.Duration timeout) {
    Native.await(handle(), token.partition(), token.offset(),
        (int) Math.min(Integer.MAX_VALUE, timeout.toMillis()));
  }

  @Override
  public void close() {
    if (handle != 0) Native.close(handle);
    handle = 0;
  }
}
