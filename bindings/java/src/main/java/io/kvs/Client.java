package io.kvs;

import java.time.Duration;

/**
 * Writes through kvsd's socket. A write returns once Kafka stored it (acks=all); with
 * visible, once this host's table applied it too. One thread at a time.
 */
public final class Client implements AutoCloseable {
  private long handle;

  /** Connects to {@code socket} (null: KVS_SOCKET, else /run/kvs/kvsd.sock). */
  public Client(String socket) {
    handle = Native.connect(socket);
  }

  private long handle() {
    if (handle == 0) throw new IllegalStateException("the client is closed");
    return handle;
  }

  public Token put(String table, byte[] key, byte[] value) {
    return put(table, key, value, false, Duration.ZERO);
  }

  /** A timeout of zero: kvsd's write_timeout_ms. */
  public Token put(String table, byte[] key, byte[] value, boolean visible, Duration timeout) {
    if (value == null) throw new IllegalArgumentException("put: a value (delete erases)");
    long[] t = Native.write(handle(), table, key, value, visible, (int) timeout.toMillis());
    return new Token((int) t[0], t[1]);
  }

  public Token delete(String table, byte[] key, boolean visible, Duration timeout) {
    long[] t = Native.write(handle(), table, key, null, visible, (int) timeout.toMillis());
    return new Token((int) t[0], t[1]);
  }

  @Override
  public void close() {
    if (handle != 0) Native.disconnect(handle);
    handle = 0;
  }
}
