// Segment names and directories (src/shm.hpp): a bare name lives in
// /dev/shm, a path in the directory it names; what is not a segment file
// is refused without blocking.
#include "src/shm.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <future>
#include <string>

namespace kvs {
namespace {

TEST(ShmTest, ASegmentIsABareNameInDevShmOrAPathInItsDirectory) {
  EXPECT_EQ(*shm::segment_in("", "kvs.", "users"), "kvs.users");
  EXPECT_EQ(*shm::segment_in("/dev/shm", "kvs.", "users"), "kvs.users");
  EXPECT_EQ(*shm::segment_in("/dev/shm/", "kvs.", "users"), "kvs.users");
  EXPECT_EQ(*shm::segment_in("/run/kvs-shm/", "kvs.", "users"), "/run/kvs-shm/kvs.users");
  auto relative = shm::segment_in("run/kvs-shm", "kvs.", "users");
  ASSERT_FALSE(relative);
  EXPECT_EQ(relative.error().code, Errc::kInvalidArgument);
  EXPECT_NE(relative.error().message.find("must be an absolute path"), std::string::npos);
  EXPECT_FALSE(shm::segment_in("/run/kvs-shm", "kvs.", "../etc/passwd"));

  EXPECT_EQ(shm::path_of("kvs.users"), "/dev/shm/kvs.users");
  EXPECT_EQ(shm::path_of("/run/kvs-shm/kvs.users"), "/run/kvs-shm/kvs.users");
  EXPECT_EQ(shm::dir_of("kvs.users"), "/dev/shm");
  EXPECT_EQ(shm::dir_of("/run/kvs-shm/kvs.users"), "/run/kvs-shm");
}

TEST(ShmTest, SegmentsInAnotherDirectoryAreCreatedRenamedAndRemovedThere) {
  const std::filesystem::path dir =
      std::filesystem::path("/dev/shm") / ("kvs-shm-test-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string a = (dir / "a").string(), b = (dir / "b").string();
  {
    auto m = shm::create_segment(a, 8192, 0640, static_cast<gid_t>(-1));
    ASSERT_TRUE(m) << m.error().message;
    m->get()->data()[100] = 42;
  }
  struct stat st {};
  ASSERT_EQ(::stat(a.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0640u);
  ASSERT_TRUE(shm::rename_segment(a, b));
  auto m = shm::open_segment(b, shm::Access::kReadOnly);
  ASSERT_TRUE(m) << m.error().message;
  EXPECT_EQ((*m)->size(), 8192u);
  EXPECT_EQ((*m)->data()[100], 42);
  auto absent = shm::open_segment(a, shm::Access::kReadOnly);
  ASSERT_FALSE(absent);
  EXPECT_EQ(absent.error().code, Errc::kNoTable);
  EXPECT_NE(absent.error().message.find(a + " does not exist"), std::string::npos);
  shm::remove_segment(b);
  EXPECT_FALSE(std::filesystem::exists(b));
  std::filesystem::remove_all(dir);
}

// A FIFO planted under a table's name (anyone may create one in /dev/shm)
// is refused at once: opening it for reading would wait for a writer.
TEST(ShmTest, AFifoUnderASegmentsNameIsRefusedWithoutBlocking) {
  const std::string name = "kvs-fifo-test-" + std::to_string(::getpid());
  ASSERT_EQ(::mkfifo(shm::path_of(name).c_str(), 0644), 0);
  auto opened = std::async(std::launch::async,
                           [&] { return shm::open_segment(name, shm::Access::kReadOnly); });
  ASSERT_EQ(opened.wait_for(std::chrono::seconds(10)), std::future_status::ready)
      << "open_segment blocked on a FIFO";
  auto r = opened.get();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::kCorrupt);
  EXPECT_NE(r.error().message.find("not a regular file"), std::string::npos) << r.error().message;
  ::unlink(shm::path_of(name).c_str());
}

}  // namespace
}  // namespace kvs
