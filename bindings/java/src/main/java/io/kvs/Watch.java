package io.kvs;

import java.time.Duration;
import java.util.Iterator;

/**
 * The changes of a table, of one key, or of keys with a prefix ({@link Table#watch}). It
 * waits on the table's futex word in shared memory; one thread uses it at a time, and the
 * table must stay open while it is.
 */
public final class Watch implements AutoCloseable, Iterable<Change> {
  private long handle;
  private final byte[][] key = new byte[1][];

  Watch(long handle) {
    this.handle = handle;
  }

  /** The next change, or null if none came within {@code timeout}. */
  public Change next(Duration timeout) {
    if (handle == 0) throw new IllegalStateException("the watch is closed");
    long[] c = Native.watchNext(handle, (int) Math.min(Integer.MAX_VALUE, timeout.toMillis()), key);
    if (c == null) return null;
    Change.Kind kind = c[0] == 1 ? Change.Kind.PUT : c[0] == 2 ? Change.Kind.DELETE
        : Change.Kind.LOST;
    return new Change(kind, key[0], (int) c[1], c[2], c[3], c[4]);
  }

  /** Blocks for each next change (the iterator never ends while the watch is open). */
  @Override
  public Iterator<Change> iterator() {
    return new Iterator<>() {
      @Override
      public boolean hasNext() {
        return handle != 0;
      }

      @Override
      public Change next() {
        Change c;
        while ((c = Watch.this.next(Duration.ofSeconds(1))) == null) {
          if (handle == 0) throw new IllegalStateException("the watch is closed");
        }
        return c;
      }
    };
  }

  @Override
  public void close() {
    if (handle != 0) Native.watchClose(handle);
    handle = 0;
  }
}
