// kvsd's bootstrap and warm restart, against the Kafka the tests use (the
// mock cluster in its own process, or KVS_TEST_BOOTSTRAP).
//
//   kvs_bootstrap_bench [--records N] [--partitions P] [--rounds R]
//
// 1. Produces N records (16-byte keys, 100-byte values) over P partitions.
// 2. Alternates, R times: a bare librdkafka consumer with kvsd's settings
//    reading every partition to its end, and a cold kvsd (no segment) from
//    start to READY=1 on a NOTIFY_SOCKET this program listens on. Prints each
//    as records/s and the kvsd/bare ratio per pair (target >= 0.9).
// 3. Warm restarts: kvsd stopped (SIGTERM, then SIGKILL) and started again
//    on the full segment, timed to READY=1 (target < 100 ms).
// Pairs run back to back so that both sides see the same machine.
#include <librdkafka/rdkafka.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "bench_support.hpp"
#include "kvs/kvs.hpp"
#include "support/kafka_cluster.hpp"
#include "support/test_support.hpp"

namespace {

using namespace kvs::bench;
using kvs::test::Child;

// Reads every partition from the beginning to its end with kvsd's consumer
// settings (daemon/kafka/consumer.cpp), touching each key and value.
// Returns seconds.
double bare_consumer(const std::string& bootstrap, const std::string& topic, int partitions,
                     long records) {
  const auto t0 = clock_type::now();
  char err[512];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  for (const auto& [k, v] :
       std::vector<std::pair<std::string, std::string>>{{"bootstrap.servers", bootstrap},
                                                        {"isolation.level", "read_committed"},
                                                        {"enable.partition.eof", "true"},
                                                        {"enable.auto.commit", "false"},
                                                        {"enable.auto.offset.store", "false"},
                                                        {"auto.offset.reset", "error"},
                                                        {"group.id", "kvs-bench"},
                                                        {"queued.min.messages", "10000000"},
                                                        {"queued.max.messages.kbytes", "262144"}}) {
    rd_kafka_conf_set(conf, k.c_str(), v.c_str(), err, sizeof err);
  }
  rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
  if (rk == nullptr) die(err);
  rd_kafka_queue_t* q = rd_kafka_queue_get_consumer(rk);
  // Metadata first, as kvsd does: partitions assigned before their leader
  // is known wait for librdkafka's 1-second offset query timer.
  {
    rd_kafka_topic_t* rkt = rd_kafka_topic_new(rk, topic.c_str(), nullptr);
    const rd_kafka_metadata_t* md = nullptr;
    if (rd_kafka_metadata(rk, 0, rkt, &md, 10000) != RD_KAFKA_RESP_ERR_NO_ERROR) die("metadata");
    rd_kafka_metadata_destroy(md);
    rd_kafka_topic_destroy(rkt);
  }
  rd_kafka_topic_partition_list_t* list = rd_kafka_topic_partition_list_new(partitions);
  for (int p = 0; p < partitions; ++p) {
    rd_kafka_topic_partition_list_add(list, topic.c_str(), p)->offset = RD_KAFKA_OFFSET_BEGINNING;
  }
  rd_kafka_assign(rk, list);
  rd_kafka_topic_partition_list_destroy(list);
  std::vector<rd_kafka_message_t*> batch(1024);
  long seen = 0;
  uint64_t sum = 0;
  // Done at the last record (an end-of-partition event can lag behind by a
  // fetch wait; kvsd does not wait for them either when the high watermark
  // is reached by a record).
  while (seen < records) {
    // As kvsd: wait for one message, then take what is there.
    batch[0] = rd_kafka_consume_queue(q, 100);
    if (batch[0] == nullptr) continue;
    const ssize_t n = 1 + std::max<ssize_t>(0, rd_kafka_consume_batch_queue(q, 0, batch.data() + 1,
                                                                            batch.size() - 1));
    for (ssize_t i = 0; i < n; ++i) {
      rd_kafka_message_t* m = batch[i];
      if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        ++seen;
        sum +=
            static_cast<const uint8_t*>(m->key)[15] + static_cast<const uint8_t*>(m->payload)[99];
      }
      rd_kafka_message_destroy(m);
    }
  }
  const double s = seconds_since(t0);
  rd_kafka_queue_destroy(q);
  rd_kafka_consumer_close(rk);
  rd_kafka_destroy(rk);
  if (sum == 0) die("consumer read nothing");
  return s;
}

// The table kvsd made must hold every record, else the timing means nothing.
void check_table(const std::string& prefix, long records) {
  auto t = kvs::Table::open("bench", {prefix});
  if (!t) die("table: " + t.error().message);
  if (t->state() != kvs::State::kReady) die("READY=1 sent but the table is not READY");
  if (t->size() != static_cast<uint64_t>(records)) {
    die("READY with " + std::to_string(t->size()) + " of " + std::to_string(records) + " keys");
  }
  char key[32];
  std::snprintf(key, sizeof key, "k%015ld", records - 1);
  auto v = t->get_copy(key);
  if (!v || v->size() != 100) die(std::string("last key missing: ") + key);
}

}  // namespace

int main(int argc, char** argv) {
  long records = 1000000;
  int partitions = 32;
  int rounds = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--records") {
      records = std::stol(argv[i + 1]);
    } else if (a == "--partitions") {
      partitions = std::stoi(argv[i + 1]);
    } else if (a == "--rounds") {
      rounds = std::stoi(argv[i + 1]);
    } else {
      die("usage: kvs_bootstrap_bench [--records N] [--partitions P] [--rounds R]");
    }
  }
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("kvs-bootstrap-bench-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  kvs::test::KafkaCluster kafka(kvs::test::helper("../tests/kvs_mock_kafka"));
  const std::string topic = kvs::test::KafkaCluster::unique_topic("bootstrap");
  if (!kafka.create_topic(topic, partitions)) die("cannot create topic " + topic);

  auto t0 = clock_type::now();
  produce(kafka.bootstrap(), topic, partitions, records);
  std::printf("produced %ld records (16 B keys, 100 B values) over %d partitions in %.2f s\n",
              records, partitions, seconds_since(t0));
  for (int p = 0; p < partitions; ++p) {
    const auto [lo, hi] = kafka.watermarks(topic, p);
    if (lo != 0) {
      die("partition " + std::to_string(p) + " starts at " + std::to_string(lo) +
          ": the mock dropped records (it keeps about 5 MB per partition); use more partitions");
    }
  }

  kvs::test::ShmScope shm;
  const std::string config = (dir / "kvsd.toml").string();
  std::ofstream(config) << "[kvsd]\nsocket_path = \"" << (dir / "s.sock").string()
                        << "\"\nshm_prefix = \"" << shm.prefix() << "\"\nlog_level = \"warning\"\n"
                        << "snapshot_interval_s = 0\n"
                        << "[kafka]\n\"bootstrap.servers\" = \"" << kafka.bootstrap() << "\"\n"
                        << "[[table]]\nname = \"bench\"\ntopic = \"" << topic << "\"\n"
                        << "capacity = " << records + records / 8 + 1024 << "\n"
                        << "memory_limit_bytes = " << (records * 128 + (64 << 20)) << "\n";
  NotifySocket notify((dir / "notify.sock").string());
  ::setenv("NOTIFY_SOCKET", notify.path().c_str(), 1);
  const std::string kvsd = kvs::test::helper("../kvsd");
  auto start_kvsd = [&] {
    return std::make_unique<Child>(std::vector<std::string>{kvsd, "--config", config});
  };

  std::printf("\nbootstrap (cold: no segment), records/s; ratio = kvsd / bare consumer\n");
  std::vector<double> ratios;
  std::unique_ptr<Child> running;
  std::vector<double> bare_cpu, kvsd_cpu;
  for (int r = 0; r < rounds; ++r) {
    const double cpu0 = own_cpu_seconds();
    const double bare = bare_consumer(kafka.bootstrap(), topic, partitions, records);
    bare_cpu.push_back(own_cpu_seconds() - cpu0);
    if (running) {
      running->kill(SIGTERM);
      running->wait();
    }
    std::filesystem::remove("/dev/shm/" + shm.prefix() + "bench");
    t0 = clock_type::now();
    running = start_kvsd();
    if (!notify.wait_ready(std::chrono::seconds(300))) die("kvsd never sent READY=1");
    const double cold = seconds_since(t0);
    kvsd_cpu.push_back(cpu_seconds_of(running->pid()));
    check_table(shm.prefix(), records);
    const double ratio = bare / cold;
    ratios.push_back(ratio);
    std::printf("  round %d: bare %9.0f/s (%.2f s)   kvsd %9.0f/s (%.2f s)   ratio %.2fx\n", r + 1,
                records / bare, bare, records / cold, cold, ratio);
  }
  std::printf("bootstrap ratio, median of %d: %.2fx (target >= 0.90x)\n", rounds, median(ratios));
  std::printf("CPU per record, median: bare %.0f ns, kvsd %.0f ns (to READY=1, all threads)\n",
              median(bare_cpu) * 1e9 / static_cast<double>(records),
              median(kvsd_cpu) * 1e9 / static_cast<double>(records));

  std::printf("\nwarm restart to READY=1 with %ld keys in the segment\n", records);
  for (const int sig : {SIGTERM, SIGKILL}) {
    std::vector<double> ms;
    for (int r = 0; r < 5; ++r) {
      running->kill(sig);
      running->wait();
      t0 = clock_type::now();
      running = start_kvsd();
      if (!notify.wait_ready(std::chrono::seconds(60))) die("kvsd never sent READY=1");
      ms.push_back(seconds_since(t0) * 1000);
      check_table(shm.prefix(), records);
    }
    std::printf("  after %s: median %.1f ms, max %.1f ms (target < 100 ms)\n",
                sig == SIGTERM ? "SIGTERM" : "SIGKILL", median(ms),
                *std::max_element(ms.begin(), ms.end()));
  }
  running->kill(SIGTERM);
  running->wait();
  std::filesystem::remove_all(dir);
  return 0;
}
