package io.kvs;

/**
 * One change a watch saw, in the order kvsd applied them. {@link #lost()}: changes were lost
 * to the watch (it fell a whole change log behind, or the table was rebuilt): re-read what you
 * watch. Read the value with Table.get: it may be newer than the change.
 */
public record Change(Kind kind, byte[] key, int partition, long offset, long timestampMs,
    long position) {
  public enum Kind { PUT, DELETE, LOST }

  public boolean lost() {
    return kind == Kind.LOST;
  }

  public Token token() {
    return new Token(partition, offset);
  }
}
