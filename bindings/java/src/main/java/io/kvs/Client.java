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

  /** One operation's outcome in a batch: code 0 and its token, or a KVS_E* code. */
  public record Outcome(int code, Token token) {
    public boolean ok() {
      return code == 0;
    }
  }

  /**
   * Writes {@code keys[i]} = {@code values[i]} (null: erases it), each on its own: not a
   * transaction; records of one partition keep their order.
   */
  public java.util.List<Outcome> batch(String table, byte[][] keys, byte[][] values,
      boolean visible, Duration timeout) {
    if (keys.length != values.length) throw new IllegalArgumentException("keys and values differ");
    long[] r = Native.batch(handle(), table, keys, values, visible, (int) timeout.toMillis());
    var out = new java.util.ArrayList<Outcome>(keys.length);
    for (int i = 0; i < keys.length; i++) {
      out.add(new Outcome((int) r[3 * i], new Token((int) r[3 * i + 1], r[3 * i + 2])));
    }
    return out;
  }

  @Override
  public void close() {
    if (handle != 0) Native.disconnect(handle);
    handle = 0;
  }
}
