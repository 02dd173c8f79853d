// kvsctl verify (the real kvsctl and kvsd on the mock cluster): the table
// equals its topic read up to the applied offsets, with overwrites,
// tombstones and a key in two partitions; a value changed in the segment
// behind kvsd's back is named, and its digest no longer matches; two kvsd
// on one topic have equal digests until one table is changed.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "support/kvsd_fixture.hpp"
#include "support/producer.hpp"
#include "writer/table_writer.hpp"

namespace kvs {
namespace {

class VerifyTest : public KvsdTest {
 protected:
  struct Run {
    int exit_code;
    std::string out, err;
  };
  Run kvsctl(const std::vector<std::string>& args) {
    std::string cmd = "'" + test::helper("../kvsctl") + "' --config '" + config_ + "'";
    for (const auto& a : args) cmd += " '" + a + "'";
    const std::string out = (dir_ / "kvsctl.out").string(), err = (dir_ / "kvsctl.err").string();
    cmd += " > '" + out + "' 2> '" + err + "' < /dev/null";
    const int st = std::system(cmd.c_str());
    return {WIFEXITED(st) ? WEXITSTATUS(st) : 128, test::slurp(out), test::slurp(err)};
  }
  // Overwrites, tombstones, and "both" in partitions 1 and 3: the later
  // timestamp (partition 1's) wins though partition 3's record comes last.
  void produce() {
    test::Producer p(kafka_.bootstrap());
    for (int i = 0; i < 2000; ++i) {
      const int k = i % 500;
      p.send(topic_, k % 4, "key" + std::to_string(k), "v" + std::to_string(i));
      ++sent_[k % 4];
    }
    for (int k = 0; k < 500; k += 9) {
      p.send(topic_, k % 4, "key" + std::to_string(k), std::nullopt);
      ++sent_[k % 4];
    }
    p.send(topic_, 0, "planted", "the value kvsd applied");
    ++sent_[0];
    p.send_at(topic_, 1, "both", "later timestamp", 2'000'000'000'000);
    p.send_at(topic_, 3, "both", "earlier timestamp", 1'000'000'000'000);
    sent_[1]++;
    sent_[3]++;
    ASSERT_TRUE(p.flush());
  }
  std::string config_;
  int64_t sent_[4] = {};
};

TEST_F(VerifyTest, ATableEqualToItsTopicVerifiesAndAPlantedDifferenceIsNamed) {
  ASSERT_TRUE(kafka_.create_topic(topic_, 4));
  produce();
  config_ = write_config();
  auto kvsd = start_kvsd(config_);
  Table t = open_ready();
  ASSERT_TRUE(test::wait_until([&] { return all_applied(t, sent_, 4); }, 30s)) << log();
  auto both = t.get_copy("both");
  ASSERT_TRUE(both);
  ASSERT_EQ(*both, "later timestamp");

  auto r = kvsctl({"verify"});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("table t: 446 keys"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(": equal"), std::string::npos) << r.out;

  // A byte of a value changed in the segment, behind kvsd's back (kvsd
  // stopped: verify reads shared memory and Kafka only).
  kvsd->kill(SIGTERM);
  ASSERT_EQ(kvsd->wait_for(30s), 0) << log();
  {
    const std::string path = "/dev/shm/" + shm_.prefix() + "t";
    const std::string segment = test::slurp(path);
    const size_t at = segment.find("the value kvsd applied");
    ASSERT_NE(at, std::string::npos);
    const int fd = ::open(path.c_str(), O_WRONLY);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::pwrite(fd, "T", 1, static_cast<off_t>(at)), 1);
    ::close(fd);
  }
  r = kvsctl({"verify"});
  EXPECT_EQ(r.exit_code, 65) << r.out << r.err;
  EXPECT_NE(r.out.find("different\t\"planted\"\ttable \"The value kvsd applied\", topic \"the "
                       "value kvsd applied\""),
            std::string::npos)
      << r.out;
  // kvsd's digest did not see the byte change: the contents hash otherwise.
  EXPECT_NE(r.out.find("digest\tkvsd keeps "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("2 difference(s)"), std::string::npos) << r.out;
}

// Two kvsd on one topic (two hosts, here one machine with two shared-memory
// prefixes and sockets): their digests, in kvsctl stats, are equal; a value
// planted in one table through a writer while its kvsd is down makes them
// differ, and verify names the key.
TEST_F(VerifyTest, TwoKvsdOnOneTopicHaveEqualDigestsUntilAChangeIsPlantedInOne) {
  ASSERT_TRUE(kafka_.create_topic(topic_, 4));
  produce();
  config_ = write_config();
  auto one = start_kvsd(config_);
  test::ShmScope shm2;
  const std::string config2 = write_second_config(shm2);
  auto start_two = [&] {
    return std::make_unique<test::Child>(
        std::vector<std::string>{test::helper("../kvsd"), "--config", config2},
        (dir_ / "kvsd2.log").string());
  };
  auto two = start_two();
  Table t1 = open_ready();
  std::optional<Table> t2 = open_table_at(shm2.prefix());
  ASSERT_TRUE(t2 && t2->wait_ready(30s));
  ASSERT_TRUE(test::wait_until(
      [&] { return all_applied(t1, sent_, 4) && all_applied(*t2, sent_, 4); }, 30s));
  auto digest_in_stats = [&](std::string config) {
    const std::string saved = std::exchange(config_, config);
    auto r = kvsctl({"stats", "--json"});
    config_ = saved;
    EXPECT_EQ(r.exit_code, 0) << r.err;
    const size_t at = r.out.find("\"digest\":\"");
    return at == std::string::npos ? std::string("none in: " + r.out) : r.out.substr(at + 10, 16);
  };
  const std::string d1 = digest_in_stats(config_);
  EXPECT_EQ(d1.size(), 16u) << d1;
  EXPECT_EQ(d1, digest_in_stats(config2));

  two->kill(SIGTERM);
  ASSERT_EQ(two->wait_for(30s), 0);
  {
    WriterOptions o;
    o.table = "t";
    o.shm_prefix = shm2.prefix();
    o.capacity = 65536;
    o.arena_bytes = 32 << 20;
    auto w = TableWriter::open(o);
    ASSERT_TRUE(w) << w.error().message;
    ASSERT_TRUE((*w)->put("planted", "a value the topic never had"));
  }
  two = start_two();
  // Once the restarted kvsd has attached, it is READY again at once.
  ASSERT_TRUE(test::wait_until(
      [&] {
        kvs_table_stats st{};
        return kvs_stat(t2->native(), &st) == KVS_OK && st.writer_pid == two->pid() &&
               t2->state() == State::kReady;
      },
      30s));
  const std::string d2 = digest_in_stats(config2);
  EXPECT_EQ(d2.size(), 16u) << d2;
  EXPECT_NE(d1, d2);
  EXPECT_EQ(d1, digest_in_stats(config_));
  const std::string saved = std::exchange(config_, config2);
  auto r = kvsctl({"verify"});
  config_ = saved;
  EXPECT_EQ(r.exit_code, 65) << r.out << r.err;
  EXPECT_NE(r.out.find("different\t\"planted\"\ttable \"a value the topic never had\""),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("1 difference(s)"), std::string::npos) << r.out;
  two->kill(SIGTERM);
  EXPECT_EQ(two->wait_for(30s), 0);
}

// Without kvsd's config there is no topic to compare with: said, exit 78.
TEST_F(VerifyTest, WithoutTheConfigVerifySaysWhatItNeeds) {
  config_ = (dir_ / "absent.toml").string();
  auto r = kvsctl({"verify"});
  EXPECT_EQ(r.exit_code, 78) << r.out << r.err;
  EXPECT_NE(r.err.find("absent.toml"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace kvs
