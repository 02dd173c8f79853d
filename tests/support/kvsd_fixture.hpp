// KvsdTest: the real kvsd in a temp dir, with its own shared-memory prefix,
// socket and topic, against the test cluster (mock process or
// KVS_TEST_BOOTSTRAP).
#pragma once

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "format/layout.hpp"
#include "kvs/kvs.hpp"
#include "src/shm.hpp"
#include "support/kafka_cluster.hpp"
#include "support/table_contents.hpp"
#include "support/test_support.hpp"

namespace kvs {

using namespace std::chrono_literals;

class KvsdTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("kvsd-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter_++));
    std::filesystem::create_directories(dir_);
    topic_ = test::KafkaCluster::unique_topic("kvsd");
  }
  void TearDown() override {
    // kvsd's log goes with the directory: a failed test shows it first.
    if (HasFailure()) std::cerr << "---- kvsd's log ----\n" << log() << "---- end ----\n";
    std::filesystem::remove_all(dir_);
  }

  // extra_table: lines for the table's section; extra_kvsd: for [kvsd].
  std::string write_config(const std::string& extra_table = "",
                           const std::string& extra_kvsd = "") {
    const std::string path = (dir_ / "kvsd.toml").string();
    std::ofstream(path) << "[kvsd]\nsocket_path = \"" << socket_path() << "\"\nshm_prefix = \""
                        << shm_.prefix() << "\"\nstate_dir = \"" << state_dir() << "\"\n"
                        << "metrics_listen = \"" << metrics_listen_ << "\"\n"
                        << extra_kvsd << "poll_timeout_ms = 20\n"
                        << "[kafka]\n\"bootstrap.servers\" = \""
                        << (bootstrap_.empty() ? kafka_.bootstrap() : bootstrap_) << "\"\n"
                        << (fast_metadata_ ? "\"topic.metadata.refresh.interval.ms\" = 1000\n" : "")
                        << "[[table]]\nname = \"t\"\ntopic = \"" << topic_ << "\"\n"
                        << "capacity = 65536\nmemory_limit_bytes = 33554432\n"
                        << extra_table;
    return path;
  }
  // A second kvsd's config, on the same topic as write_config's (another
  // host, on this machine): its own socket (s2.sock), shared-memory prefix
  // (shm2's) and state_dir. Call write_config first. Its path.
  std::string write_second_config(const test::ShmScope& shm2) {
    std::string cfg = test::slurp((dir_ / "kvsd.toml").string());
    for (const auto& [from, to] : {std::pair{socket_path(), (dir_ / "s2.sock").string()},
                                   std::pair{"shm_prefix = \"" + shm_.prefix() + "\"",
                                             "shm_prefix = \"" + shm2.prefix() + "\""},
                                   std::pair{state_dir(), state_dir() + "2"}}) {
      const size_t at = cfg.find(from);
      if (at == std::string::npos) throw std::runtime_error("write_config wrote no " + from);
      cfg.replace(at, from.size(), to);
    }
    const std::string path = (dir_ / "kvsd2.toml").string();
    std::ofstream(path) << cfg;
    return path;
  }
  // Opens table t under `prefix` once a kvsd has created it there.
  static std::optional<Table> open_table_at(const std::string& prefix,
                                            std::chrono::milliseconds timeout = 30s) {
    std::optional<Table> t;
    EXPECT_TRUE(test::wait_until(
        [&] {
          auto r = Table::open("t", {prefix});
          if (r) t.emplace(std::move(*r));
          return r.has_value();
        },
        timeout))
        << "no kvsd created table t under " << prefix;
    return t;
  }
  // kvsd's stderr goes to log_path(); tests look for its messages there.
  std::unique_ptr<test::Child> start_kvsd(const std::string& config) {
    return std::make_unique<test::Child>(
        std::vector<std::string>{test::helper("../kvsd"), "--config", config}, log_path());
  }
  std::string socket_path() const { return (dir_ / "s.sock").string(); }
  std::string state_dir() const { return (dir_ / "state").string(); }
  std::string log_path() const { return (dir_ / "kvsd.log").string(); }
  std::string log() const { return test::slurp(log_path()); }
  static size_t count(const std::string& text, const std::string& what) {
    size_t n = 0;
    for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
    return n;
  }
  // Opens the table once kvsd has created it.
  Table open_table(std::chrono::milliseconds timeout = 30s) {
    std::optional<Table> t;
    EXPECT_TRUE(test::wait_until(
        [&] {
          auto r = Table::open("t", {shm_.prefix()});
          if (r) t.emplace(std::move(*r));
          return r.has_value();
        },
        timeout))
        << "kvsd never created the table";
    if (!t) throw std::runtime_error("no table");
    return std::move(*t);
  }
  // Opens the table once kvsd has created it, and waits for READY.
  Table open_ready(std::chrono::milliseconds timeout = 30s) {
    Table t = open_table(timeout);
    auto ready = t.wait_ready(timeout);
    EXPECT_TRUE(ready) << (ready ? "" : ready.error().message);
    return t;
  }
  std::map<std::string, std::string> contents(const Table& t) { return test::contents(t); }
  // The table has applied every record produced: partition p up to sent[p].
  static bool all_applied(const Table& t, const int64_t* sent, int partitions) {
    for (int p = 0; p < partitions; ++p) {
      auto o = t.partition_offsets(static_cast<uint32_t>(p));
      if (!o || o->next_offset < sent[p]) return false;
    }
    return true;
  }
  const format::TableHeader& header() {
    if (!segment_) {
      auto m = shm::open_segment(shm_.prefix() + "t", shm::Access::kReadOnly);
      if (!m) throw std::runtime_error(m.error().message);
      segment_ = std::move(*m);
    }
    return *reinterpret_cast<const format::TableHeader*>(segment_->data());
  }

  static inline int counter_ = 0;
  test::KafkaCluster kafka_;
  test::ShmScope shm_;
  std::filesystem::path dir_;
  std::string topic_;
  std::string bootstrap_;  // write_config's cluster when not kafka_'s
  // write_config asks librdkafka to refresh metadata every second (its
  // default: every 5 minutes).
  bool fast_metadata_ = true;
  // kvsd's metrics endpoint: none unless a test asks (the default port is
  // one for all, and tests run side by side).
  std::string metrics_listen_;
  std::unique_ptr<shm::Mapping> segment_;
};

}  // namespace kvs
