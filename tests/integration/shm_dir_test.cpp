// Segments in another directory than /dev/shm (kvsd's `shm_dir`, the
// readers' KVS_SHM_DIR or kvs_open_options.shm_dir): the deployment where one
// memory-backed volume is mounted into every container of a pod. The real
// kvsd on the mock cluster; readers and kvsctl find the table there, follow
// its growth there, and a reader that looks in /dev/shm is told where it
// looked.
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <filesystem>
#include <map>
#include <string>

#include "support/kvsd_fixture.hpp"
#include "support/producer.hpp"

namespace kvs {
namespace {

namespace fs = std::filesystem;

class ShmDirTest : public KvsdTest {
 protected:
  void SetUp() override {
    KvsdTest::SetUp();
    // Memory-backed, as a pod's emptyDir (medium: Memory) is.
    segments_ = fs::path("/dev/shm") / ("kvs-dir-test-" + std::to_string(::getpid()));
    fs::remove_all(segments_);
    fs::create_directories(segments_);
    ::chmod(segments_.c_str(), 0755);
  }
  void TearDown() override {
    ::unsetenv("KVS_SHM_DIR");
    KvsdTest::TearDown();
    fs::remove_all(segments_);
  }
  std::string config(const std::string& extra_table = "") {
    return write_config(extra_table, "shm_dir = \"" + segments_.string() + "\"\n");
  }
  static uint64_t capacity(const Table& t) {
    kvs_table_stats s{};
    EXPECT_EQ(kvs_stat(t.native(), &s), KVS_OK);
    return s.capacity;
  }
  std::string segment() const { return (segments_ / (shm_.prefix() + "t")).string(); }
  // Keys [0, n) with values "v<i>", over 4 partitions.
  std::map<std::string, std::string> produce(int n) {
    std::map<std::string, std::string> model;
    test::Producer p(kafka_.bootstrap());
    for (int i = 0; i < n; ++i) {
      const std::string k = "key" + std::to_string(i), v = "v" + std::to_string(i);
      p.send(topic_, i % 4, k, v);
      model[k] = v;
    }
    EXPECT_TRUE(p.flush());
    return model;
  }
  fs::path segments_;
};

TEST_F(ShmDirTest, ReadersFindTheTableThroughTheOptionTheEnvironmentAndKvsctl) {
  ASSERT_TRUE(kafka_.create_topic(topic_, 4));
  const auto model = produce(3000);
  auto kvsd = start_kvsd(config());
  auto opened = [&](const OpenOptions& o) { return Table::open("t", o); };
  ASSERT_TRUE(test::wait_until([&] {
    return opened({shm_.prefix(), segments_}).has_value();
  })) << log();
  Table t = std::move(*opened({shm_.prefix(), segments_}));
  ASSERT_TRUE(t.wait_ready(30s));
  EXPECT_EQ(contents(t), model);
  // The segment, its registry and nothing in /dev/shm.
  EXPECT_TRUE(fs::is_regular_file(segment()));
  EXPECT_TRUE(fs::is_directory(segment() + ".readers"));
  EXPECT_FALSE(fs::exists("/dev/shm/" + shm_.prefix() + "t"));

  // Without the directory, a reader looks in /dev/shm and says so.
  auto absent = opened({shm_.prefix()});
  ASSERT_FALSE(absent);
  EXPECT_EQ(absent.error().code, Errc::kNoTable);
  EXPECT_NE(absent.error().message.find("/dev/shm/" + shm_.prefix() + "t does not exist"),
            std::string::npos)
      << absent.error().message;

  // KVS_SHM_DIR stands in for the option; the option wins over it.
  ::setenv("KVS_SHM_DIR", segments_.c_str(), 1);
  auto by_env = opened({shm_.prefix()});
  ASSERT_TRUE(by_env) << by_env.error().message;
  auto v7 = by_env->get_copy("key7");
  ASSERT_TRUE(v7);
  EXPECT_EQ(*v7, "v7");
  ::setenv("KVS_SHM_DIR", "/nonexistent-dir", 1);
  EXPECT_TRUE(opened({shm_.prefix(), segments_}));
  ::unsetenv("KVS_SHM_DIR");

  // kvsctl takes the directory from kvsd's config, or from --shm-dir.
  const std::string kvsctl = test::helper("../kvsctl");
  auto via_config = test::run_capture({kvsctl, "--config", config(), "get", "key42"});
  EXPECT_EQ(via_config.status, 0);
  EXPECT_EQ(via_config.output, "v42\n");
  auto via_flag = test::run_capture({kvsctl, "--shm-prefix", shm_.prefix(), "--shm-dir",
                                     segments_.string(), "-t", "t", "get", "key43"});
  EXPECT_EQ(via_flag.status, 0);
  EXPECT_EQ(via_flag.output, "v43\n");
  kvsd->kill(SIGTERM);
  EXPECT_EQ(kvsd->wait_for(30s), 0) << log();
}

// A table that outgrows its segment is copied into a larger one beside it,
// in the same directory, and readers there move to it.
TEST_F(ShmDirTest, ATableGrowsInItsDirectoryAndItsReadersFollow) {
  ASSERT_TRUE(kafka_.create_topic(topic_, 4));
  auto kvsd = start_kvsd(config());
  ASSERT_TRUE(test::wait_until([&] { return fs::exists(segment()); })) << log();
  auto t = Table::open("t", {shm_.prefix(), segments_});
  ASSERT_TRUE(t) << t.error().message;
  ASSERT_TRUE(t->wait_ready(30s));
  const uint64_t capacity_before = capacity(*t);
  const auto model = produce(static_cast<int>(capacity_before) + 20000);
  ASSERT_TRUE(test::wait_until([&] { return t->size() == model.size(); }, 60s))
      << t->size() << " of " << model.size() << "\n"
      << log();
  EXPECT_GT(capacity(*t), capacity_before) << "the table did not grow";
  EXPECT_EQ(contents(*t), model);
  // The replaced segment and the replacement's temporary names are gone.
  for (const auto& e : fs::directory_iterator(segments_)) {
    const std::string name = e.path().filename().string();
    EXPECT_TRUE(name == shm_.prefix() + "t" || name == shm_.prefix() + "t.readers") << name;
  }
  kvsd->kill(SIGTERM);
  EXPECT_EQ(kvsd->wait_for(30s), 0) << log();
}

}  // namespace
}  // namespace kvs
