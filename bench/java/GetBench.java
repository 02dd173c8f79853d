package io.kvs;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.Arrays;
import java.util.HashMap;
import java.util.Random;

/**
 * A get through io.kvs against HashMap&lt;ByteBuffer, byte[]&gt;.get of the same keys in the
 * same JVM, after JIT warm-up, same run (kvs_java_bench; see docs/BENCHMARKS.md):
 * 1,000,000 keys of 16 bytes with 100-byte values, in a table another process (kvsd, on the
 * mock cluster, fed by kcat) filled. guard.get (a read-only ByteBuffer over shared memory, one
 * guard per 1,000 gets) and table.get (byte[], a guard of its own) against HashMap.get. Target:
 * guard.get &lt;= 1.5x. Usage: GetBench [keys] [rounds]
 */
public final class GetBench {
  static byte[] key(int i) {
    return String.format("k%015d", i).getBytes(StandardCharsets.US_ASCII);
  }

  static byte[] value(int i) {
    return String.format("%0100d", (long) i * 7919).getBytes(StandardCharsets.US_ASCII);
  }

  static volatile long sink;

  @SuppressWarnings("try")  // the harness's close() may be interrupted
  public static void main(String[] args) throws Exception {
    final int n = args.length > 0 ? Integer.parseInt(args[0]) : 1_000_000;
    final int rounds = args.length > 1 ? Integer.parseInt(args[1]) : 5;
    try (KvsdHarness kvsd = new KvsdHarness(32, 2L * n, 256L << 20)) {
      fill(kvsd, n);
      try (Table table = kvsd.open()) {
        if (!KvsdHarness.waitUntil(() -> table.size() == n, 300_000)) {
          throw new IOException("the table holds " + table.size() + " of " + n);
        }
        run(table, n, rounds);
      }
    }
  }

  static void fill(KvsdHarness kvsd, int n) throws Exception {
    StringBuilder sb = new StringBuilder(n * 120);
    for (int i = 0; i < n; i++) {
      sb.append(new String(key(i), StandardCharsets.US_ASCII)).append('\t')
          .append(new String(value(i), StandardCharsets.US_ASCII)).append('\n');
    }
    kvsd.kcat(sb.toString().getBytes(StandardCharsets.US_ASCII));
  }

  static void run(Table table, int n, int rounds) {
    HashMap<ByteBuffer, byte[]> map = new HashMap<>(2 * n);
    for (int i = 0; i < n; i++) map.put(ByteBuffer.wrap(key(i)), value(i));
    Random rng = new Random(42);
    final int gets = 1_000_000;
    byte[][] keys = new byte[gets][];
    ByteBuffer[] wrapped = new ByteBuffer[gets];
    for (int i = 0; i < gets; i++) {
      keys[i] = key(rng.nextInt(n));
      wrapped[i] = ByteBuffer.wrap(keys[i]);
    }
    for (int w = 0; w < 5; w++) {  // JIT warm-up of all three
      mapNs(map, wrapped);
      guardNs(table, keys);
      copyNs(table, keys);
    }
    double[] ratio = new double[rounds];
    for (int r = 0; r < rounds; r++) {
      double m = mapNs(map, wrapped), g = guardNs(table, keys), c = copyNs(table, keys);
      ratio[r] = g / m;
      System.out.printf("round %d: HashMap.get %.1f ns; guard.get %.1f ns = %.2fx; "
          + "table.get (byte[]) %.1f ns = %.2fx%n", r + 1, m, g, g / m, c, c / m);
    }
    Arrays.sort(ratio);
    System.out.printf("median: guard.get %.2fx HashMap.get (target <= 1.5x)%n", ratio[rounds / 2]);
  }

  static double mapNs(HashMap<ByteBuffer, byte[]> map, ByteBuffer[] keys) {
    long t0 = System.nanoTime(), s = 0;
    for (ByteBuffer k : keys) s += map.get(k)[0];
    sink = s;
    return (System.nanoTime() - t0) / (double) keys.length;
  }

  static double guardNs(Table table, byte[][] keys) {
    long t0 = System.nanoTime(), s = 0;
    for (int i = 0; i < keys.length; i += 1000) {
      try (ReadGuard g = table.read()) {
        for (int j = i; j < Math.min(keys.length, i + 1000); j++) s += g.get(keys[j]).get(0);
      }
    }
    sink = s;
    return (System.nanoTime() - t0) / (double) keys.length;
  }

  static double copyNs(Table table, byte[][] keys) {
    long t0 = System.nanoTime(), s = 0;
    for (byte[] k : keys) s += table.get(k)[0];
    sink = s;
    return (System.nanoTime() - t0) / (double) keys.length;
  }
}
