package io.kvs;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.OutputStreamWriter;
import java.io.Writer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.UUID;
import java.util.concurrent.TimeUnit;
import java.util.function.BooleanSupplier;

/**
 * A kvsd serving table "t" on librdkafka's mock cluster, both real processes
 * (KVS_JAVA_KVSD, KVS_JAVA_MOCK_KAFKA), for the binding's tests.
 */
@SuppressWarnings("try")  // close() may be interrupted: the test fails then
final class KvsdHarness implements AutoCloseable {
  final Path dir;
  final String topic = "kvs-java-" + UUID.randomUUID().toString().substring(0, 12);
  final String prefix = "kvsjava" + UUID.randomUUID().toString().substring(0, 6) + ".";
  final String socket;
  final String bootstrap;
  private final Process mock;
  private final Writer mockIn;
  private Process kvsd;

  KvsdHarness(int partitions) throws IOException {
    this(partitions, 4096, 4L << 20);
  }

  KvsdHarness(int partitions, long capacity, long memoryBytes) throws IOException {
    dir = Files.createTempDirectory("kvs-java-");
    socket = dir.resolve("s.sock").toString();
    mock = new ProcessBuilder(System.getenv("KVS_JAVA_MOCK_KAFKA")).start();
    var out = new BufferedReader(new InputStreamReader(mock.getInputStream(), StandardCharsets.UTF_8));
    mockIn = new OutputStreamWriter(mock.getOutputStream(), StandardCharsets.UTF_8);
    String[] line = out.readLine().split(" ");
    bootstrap = line[1];
    mockIn.write("create " + topic + " " + partitions + "\n");
    mockIn.flush();
    if (!"ok".equals(out.readLine())) throw new IOException("mock cluster: no topic");
    Files.writeString(dir.resolve("kvsd.toml"),
        "[kvsd]\nmetrics_listen = \"\"\nsocket_path = \"" + socket + "\"\nshm_prefix = \"" + prefix + "\"\n"
            + "state_dir = \"" + dir.resolve("state") + "\"\npoll_timeout_ms = 20\n"
            + "[kafka]\n\"bootstrap.servers\" = \"" + bootstrap + "\"\n"
            + "[[table]]\nname = \"t\"\ntopic = \"" + topic + "\"\n"
            + "capacity = " + capacity + "\nmemory_limit_bytes = " + memoryBytes + "\n");
    start();
  }

  void start() throws IOException {
    kvsd = new ProcessBuilder(System.getenv("KVS_JAVA_KVSD"), "--config",
        dir.resolve("kvsd.toml").toString())
        .redirectError(ProcessBuilder.Redirect.appendTo(dir.resolve("kvsd.log").toFile()))
        .start();
    if (!waitUntil(KvsdHarness.this::answers, 60_000)) {
      throw new IOException("kvsd did not listen: " + log());
    }
  }

  private boolean answers() {
    try {
      new Client(socket).close();
      return true;
    } catch (KvsException e) {
      return false;
    }
  }

  void kill() throws InterruptedException {
    kvsd.destroyForcibly().waitFor(30, TimeUnit.SECONDS);
  }

  String log() throws IOException {
    return Files.readString(dir.resolve("kvsd.log"));
  }

  Table open() {
    return Table.open("t", prefix, null, null, Table.HANDOVER_NEVER);
  }

  /** Records written by kcat, an independent producer: "key\tvalue" lines. */
  void kcat(byte[] lines) throws IOException, InterruptedException {
    Process p = new ProcessBuilder("kcat", "-P", "-b", bootstrap, "-t", topic, "-K", "\t")
        .redirectErrorStream(true).start();
    p.getOutputStream().write(lines);
    p.getOutputStream().close();
    if (!p.waitFor(60, TimeUnit.SECONDS) || p.exitValue() != 0) throw new IOException("kcat");
  }

  static boolean waitUntil(BooleanSupplier f, long ms) {
    long deadline = System.nanoTime() + ms * 1_000_000;
    while (System.nanoTime() < deadline) {
      if (f.getAsBoolean()) return true;
      try {
        Thread.sleep(10);
      } catch (InterruptedException e) {
        return false;
      }
    }
    return f.getAsBoolean();
  }

  @Override
  public void close() throws Exception {
    kvsd.destroy();
    kvsd.waitFor(30, TimeUnit.SECONDS);
    mockIn.close();
    mock.waitFor(30, TimeUnit.SECONDS);
    try (var s = Files.list(Path.of("/dev/shm"))) {
      s.filter(p -> p.getFileName().toString().startsWith(prefix)).forEach(KvsdHarness::delete);
    }
    delete(dir);
  }

  private static void delete(Path p) {
    try (var w = Files.walk(p)) {
      w.sorted(java.util.Comparator.reverseOrder()).forEach(x -> x.toFile().delete());
    } catch (IOException e) {
      // best effort
    }
  }
}
