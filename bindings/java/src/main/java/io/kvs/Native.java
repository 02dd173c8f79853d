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

  static native long connect(String socket);

  static native void disconnect(long client);

  /** value null: an erase. Returns {partition, offset}. */
  static native long[] write(long client, String table, byte[] key, byte[] value,
      boolean visible, int timeoutMs);
}
