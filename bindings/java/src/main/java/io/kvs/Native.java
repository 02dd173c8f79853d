package io.kvs;

/** libkvs's C ABI as JNI (native/kvs_jni.cpp): handles are pointers as longs. */
final class Native {
  static {
    System.loadLibrary("kvs_jni");
  }

  private Native() {}

  static native long open(String name, String prefix, String dir, String socket, int handover);

  static native void close(long table);

  static native byte[] getCopy(long table, byte[] key);

  static native long size(long table);

  static native void waitReady(long table, int timeoutMs);

  static native void await(long table, int partition, long offset, int timeoutMs);

  static native long readBegin(long table);

  static native void readEnd(long txn);

  /** The value's address and length in out[0], out[1]; false if absent. */
  static native boolean get(long txn, byte[] key, long[] out);

  /** Calls fn.accept(key address, key length, value address, value length) per entry. */
  static native void forEach(long txn, EntryVisitor fn);

  interface EntryVisitor {
    /** False stops the walk. */
    boolean visit(long key, long keyLen, long value, long valueLen);
  }

  static native long watchOpen(long table, int filter, byte[] key);

  /** The next change as {kind, partition, offset, timestampMs, position} and its key in
   *  key[0]; null if none came in time. */
  static native long[] watchNext(long watch, int timeoutMs, byte[][] key);

  static native void watchClose(long watch);

  static native long connect(String socket);

  static native void disconnect(long client);

  /** value null: an erase. Returns {partition, offset}. */
  static native long[] write(long client, String table, byte[] key, byte[] value,
      boolean visible, int timeoutMs);

  /** values[i] null: an erase. Returns {code, partition, offset} per operation. */
  static native long[] batch(long client, String table, byte[][] keys, byte[][] values,
      boolean visible, int timeoutMs);
}
