package io.kvs;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.List;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicReference;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/**
 * io.kvs against a live kvsd on the mock cluster: what kvsd and kcat wrote is read back,
 * buffers end with their guard, readers on several threads, a table that grows while a guard
 * is held, kvsd killed and restarted while reads go on, and errors as KvsException.
 */
class TableTest {
  private KvsdHarness kvsd;
  private Table table;
  private Client client;

  static byte[] b(String s) {
    return s.getBytes(StandardCharsets.UTF_8);
  }

  static String s(ByteBuffer v) {
    byte[] a = new byte[v.remaining()];
    v.duplicate().get(a);
    return new String(a, StandardCharsets.UTF_8);
  }

  @BeforeEach
  void start() throws Exception {
    kvsd = new KvsdHarness(4);
    client = new Client(kvsd.socket);
    table = kvsd.open();
    table.waitReady(Duration.ofSeconds(30));
  }

  @AfterEach
  void stop() throws Exception {
    table.close();
    client.close();
    kvsd.close();
  }

  @Test
  void readsWhatKvsdAndAnIndependentProducerWrote() throws Exception {
    Token tok = client.put("t", b("flag"), b("on"), true, Duration.ZERO);
    assertTrue(tok.offset() >= 0);
    assertArrayEquals(b("on"), table.get(b("flag")));
    assertNull(table.get(b("absent")));
    // Non-UTF-8 key bytes and an empty value, from kcat.
    byte[] lines = {(byte) 0xff, (byte) 0xfe, 'k', '\t', '\n', 'z', '\t', 'v', '\n'};
    kvsd.kcat(lines);
    byte[] binary = {(byte) 0xff, (byte) 0xfe, 'k'};
    assertTrue(KvsdHarness.waitUntil(() -> table.get(b("z")) != null && table.get(binary) != null,
        30_000));
    assertArrayEquals(new byte[0], table.get(binary));
    List<byte[]> many = table.getMany(List.of(b("flag"), b("absent"), b("z")));
    assertArrayEquals(b("on"), many.get(0));
    assertNull(many.get(1));
    assertArrayEquals(b("v"), many.get(2));
    assertEquals(3, table.size());
    Token del = client.delete("t", b("flag"), false, Duration.ZERO);
    table.await(del, Duration.ofSeconds(10));
    assertNull(table.get(b("flag")));
  }

  @Test
  void errorsCarryKvsCodes() {
    KvsException e = assertThrows(KvsException.class,
        () -> Table.open("nosuch", kvsd.prefix, null, null, Table.HANDOVER_NEVER));
    assertEquals(KvsException.NO_TABLE, e.code());
    assertTrue(e.getMessage().contains("does not exist"), e.getMessage());
    assertTrue(e.retriable());
    e = assertThrows(KvsException.class, () -> client.put("nosuch", b("k"), b("v")));
    assertEquals(KvsException.INVALID, e.code());
    e = assertThrows(KvsException.class, () -> new Client(kvsd.dir + "/no.sock"));
    assertEquals(KvsException.CONNECTION, e.code());
  }

  @Test
  void buffersEndWithTheirGuard() throws Exception {
    client.put("t", b("k"), b("value"), true, Duration.ZERO);
    ByteBuffer v;
    try (ReadGuard g = table.read()) {
      v = g.get(b("k"));
      assertTrue(v.isReadOnly());
      assertEquals("value", s(v));
      assertNull(g.get(b("absent")));
      // Another thread may not use the guard's buffers.
      AtomicReference<Throwable> other = new AtomicReference<>();
      Thread t = new Thread(() -> {
        try {
          v.get(0);
        } catch (Throwable x) {
          other.set(x);
        }
      });
      t.start();
      t.join();
      assertTrue(other.get() instanceof IllegalStateException, String.valueOf(other.get()));
    }
    assertThrows(IllegalStateException.class, () -> v.get(0));
  }

  @Test
  void readersOnSeveralThreadsWhileKvsdWrites() throws Exception {
    // Every key applied before the readers start (tokens of every partition).
    List<Token> tokens = new java.util.ArrayList<>();
    for (int i = 0; i < 200; i++) tokens.add(client.put("t", b("k" + i), b("v" + i)));
    for (Token t : tokens) table.await(t, Duration.ofSeconds(10));
    AtomicBoolean stop = new AtomicBoolean();
    List<String> bad = new CopyOnWriteArrayList<>();
    Thread[] readers = new Thread[4];
    for (int r = 0; r < readers.length; r++) {
      readers[r] = new Thread(() -> {
        while (!stop.get()) {
          try (ReadGuard g = table.read()) {
            for (int i = 0; i < 200; i += 7) {
              ByteBuffer v = g.get(b("k" + i));
              if (v == null || !s(v).startsWith("v")) bad.add("k" + i);
            }
          }
        }
      });
      readers[r].start();
    }
    for (int round = 0; round < 5; round++) {
      for (int i = 0; i < 200; i++) client.put("t", b("k" + i), b("v" + i + "-" + round));
    }
    client.put("t", b("done"), b("1"), true, Duration.ZERO);
    stop.set(true);
    for (Thread t : readers) t.join();
    assertEquals(List.of(), bad);
  }

  @Test
  void aTableThatGrowsWhileAGuardIsHeld() throws Exception {
    client.put("t", b("pinned"), b("old"), true, Duration.ZERO);
    try (ReadGuard g = table.read()) {
      ByteBuffer v = g.get(b("pinned"));
      List<Token> tokens = new java.util.ArrayList<>();
      for (int i = 0; i < 6000; i++) tokens.add(client.put("t", b("g" + i), b("x")));
      client.put("t", b("pinned"), b("new"), true, Duration.ZERO);
      for (Token t : tokens) table.await(t, Duration.ofSeconds(30));  // every partition's
      assertEquals("old", s(v));  // the guard's segment stays
    }
    assertArrayEquals(b("new"), table.get(b("pinned")));
    assertEquals(6001, table.size());
  }

  @Test
  void aWatchSeesEveryChangeOfAPrefix() throws Exception {
    try (Watch w = table.watchPrefix(b("flags/"))) {
      assertNull(w.next(Duration.ZERO));
      client.put("t", b("other"), b("x"));
      for (int i = 0; i < 20; i++) client.put("t", b("flags/" + i), b("on"));
      client.delete("t", b("flags/3"), true, Duration.ZERO);
      List<String> seen = new java.util.ArrayList<>();
      for (Change c : w) {
        seen.add(c.kind() + " " + new String(c.key(), StandardCharsets.UTF_8));
        if (seen.size() == 21) break;
      }
      List<String> expected = new java.util.ArrayList<>();
      for (int i = 0; i < 20; i++) expected.add("PUT flags/" + i);
      expected.add("DELETE flags/3");
      assertEquals(new java.util.TreeSet<>(expected), new java.util.TreeSet<>(seen));
      // Order is kept within a partition: a key's put comes before its delete.
      assertTrue(seen.indexOf("PUT flags/3") < seen.indexOf("DELETE flags/3"), seen.toString());
    }
    try (Watch w = table.watchKey(b("one"))) {
      Token tok = client.put("t", b("one"), b("1"));
      Change c = w.next(Duration.ofSeconds(10));
      assertEquals(Change.Kind.PUT, c.kind());
      assertEquals(tok, c.token());
    }
  }

  @Test
  void batchesAndForEach() throws Exception {
    client.put("t", b("gone"), b("x"), true, Duration.ZERO);
    List<Client.Outcome> r = client.batch("t", new byte[][] {b("a"), b("b"), b("gone")},
        new byte[][] {b("1"), new byte[0], null}, true, Duration.ZERO);
    assertEquals(3, r.size());
    assertTrue(r.stream().allMatch(Client.Outcome::ok), r.toString());
    java.util.Map<String, String> all = new java.util.TreeMap<>();
    table.forEach((k, v) -> all.put(new String(k, StandardCharsets.UTF_8),
        new String(v, StandardCharsets.UTF_8)));
    assertEquals(java.util.Map.of("a", "1", "b", ""), all);
    ByteBuffer kept;
    try (ReadGuard g = table.read()) {
      List<ByteBuffer> keys = new java.util.ArrayList<>();
      g.forEach((k, v) -> keys.add(k));
      assertEquals(2, keys.size());
      kept = keys.get(0);
    }
    assertThrows(IllegalStateException.class, () -> kept.get(0));
  }

  @Test
  void kvsdKilledAndRestartedWhileReadsGoOn() throws Exception {
    client.put("t", b("k"), b("before"), true, Duration.ZERO);
    client.close();
    kvsd.kill();
    assertArrayEquals(b("before"), table.get(b("k")));
    kvsd.start();
    client = new Client(kvsd.socket);
    client.put("t", b("k"), b("after"), true, Duration.ZERO);
    assertArrayEquals(b("after"), table.get(b("k")));
  }
}
