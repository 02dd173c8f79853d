package io.kvs;

import java.nio.ByteBuffer;
import jdk.incubator.foreign.MemoryAddress;
import jdk.incubator.foreign.ResourceScope;

/**
 * A read guard: values read through it are read-only ByteBuffers over shared memory, valid
 * until {@link #close()}. Each buffer belongs to the guard's confined scope: used after close,
 * or from another thread, it throws IllegalStateException; it never reads memory kvsd may
 * reuse, and never crashes the JVM. A guard belongs to the thread that opened it.
 */
public final class ReadGuard implements AutoCloseable {
  private final Table table;
  private long txn;
  private final ResourceScope scope = ResourceScope.newConfinedScope();
  private final long[] out = new long[2];

  ReadGuard(Table table, long txn) {
    this.table = table;
    this.txn = txn;
  }

  /** The value of {@code key} in shared memory, or null if the table has no such key. */
  public ByteBuffer get(byte[] key) {
    if (txn == 0) throw new IllegalStateException("the read guard is closed");
    if (!Native.get(txn, key, out)) return null;
    return buffer(out[0], out[1]);
  }

  /**
   * Calls {@code fn} with every entry's key and value (buffers of this guard), in no
   * particular order, until it returns false.
   */
  public void forEach(java.util.function.BiPredicate<ByteBuffer, ByteBuffer> fn) {
    if (txn == 0) throw new IllegalStateException("the read guard is closed");
    Native.forEach(txn, (k, kl, v, vl) -> fn.test(buffer(k, kl), buffer(v, vl)));
  }

  private ByteBuffer buffer(long address, long length) {
    if (length == 0) return ByteBuffer.allocate(0).asReadOnlyBuffer();
    return MemoryAddress.ofLong(address).asSegment(length, scope).asByteBuffer()
        .asReadOnlyBuffer();
  }

  /** Ends the guard: every buffer it gave out throws from now on. */
  @Override
  public void close() {
    if (txn == 0) return;
    scope.close();  // throws, from another thread: the guard stays open
    Native.readEnd(txn);
    txn = 0;
  }

  Table table() {
    return table;
  }
}
