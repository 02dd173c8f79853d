// kvsctl verify (the real kvsctl and kvsd on the mock cluster): the table
// equals its topic read up to the applied offsets, with overwrites,
// tombstones and a key in two partitions; a value changed in the segment
// behind kvsd's back is named.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "support/kvsd_fixture.hpp"
#include "support/producer.hpp"

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
  EXPECT_NE(r.out.find("1 difference(s)"), std::string::npos) << r.out;
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
