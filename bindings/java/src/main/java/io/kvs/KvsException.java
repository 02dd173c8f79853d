package io.kvs;

/** A kvs error: {@link #code()} is the KVS_E* value of kvs.h, the message says what was wrong. */
public class KvsException extends RuntimeException {
  public static final int NO_TABLE = -2;
  public static final int LAYOUT = -3;
  public static final int CORRUPT = -4;
  public static final int ACCESS = -5;
  public static final int INVALID = -6;
  public static final int TIMED_OUT = -7;
  public static final int TOO_BIG = -11;
  public static final int BUSY = -12;
  public static final int CONNECTION = -18;
  public static final int KAFKA = -19;

  private static final long serialVersionUID = 1L;
  private final int code;

  public KvsException(int code, String message) {
    super(message);
    this.code = code;
  }

  public int code() {
    return code;
  }

  /** Whether trying again later may succeed (kvsd starting, a timeout, a full queue). */
  public boolean retriable() {
    return code == NO_TABLE || code == TIMED_OUT || code == BUSY || code == CONNECTION
        || code == -17 || code == -14;
  }
}
