// What a config names on the host (daemon/config/paths.hpp): the state
// directory and everything under it, the socket's directory, seed_from
// files. Each problem names file, line, key and value, and the way out.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "config/paths.hpp"

namespace kvs::config {
namespace {

namespace fs = std::filesystem;

class ConfigPathsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("kvs-paths-" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_ / "state");
    ::chmod((dir_ / "state").c_str(), 0750);
  }
  void TearDown() override { fs::remove_all(dir_); }
  // The config's problem with the host, or "".
  std::string problem(const std::string& kvsd_lines, const std::string& table_lines = "",
                      const std::string& socket = "") {
    auto c = parse("[kvsd]\nsocket_path = \"" + (socket.empty() ? path("s.sock") : socket) +
                       "\"\nstate_dir = \"" + (dir_ / "state").string() + "\"\n" + kvsd_lines +
                       "[kafka]\n\"bootstrap.servers\" = \"b:9092\"\n[[table]]\nname = \"t\"\n"
                       "topic = \"t\"\n" +
                       table_lines,
                   "kvsd.toml");
    EXPECT_TRUE(c) << c.error().message;
    auto ok = check_paths(*c);
    return ok ? "" : ok.error().message;
  }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  static bool root() { return ::geteuid() == 0; }
  fs::path dir_;
};

TEST_F(ConfigPathsTest, AStateDirKvsdOwnsAloneIsFine) {
  EXPECT_EQ(problem(""), "");
  fs::create_directories(dir_ / "state/kvs.t");
  std::ofstream(path("state/kvs.t/1.snapshot")) << "x";
  EXPECT_EQ(problem(""), "");
  fs::remove_all(dir_ / "state");
  EXPECT_EQ(problem(""), "") << "a state_dir that does not exist yet is made at start";
}

TEST_F(ConfigPathsTest, AStateDirOthersMayWriteIsRefused) {
  ::chmod((dir_ / "state").c_str(), 01777);
  const std::string p = problem("");
  EXPECT_EQ(p.rfind("kvsd.toml:3:13: kvsd.state_dir = \"" + path("state") + "\": ", 0), 0u) << p;
  EXPECT_NE(p.find("has mode 1777"), std::string::npos) << p;
  EXPECT_NE(p.find("StateDirectory=kvs"), std::string::npos) << p;
}

TEST_F(ConfigPathsTest, AStateDirThatIsAFileIsRefused) {
  fs::remove_all(dir_ / "state");
  std::ofstream(path("state")) << "x";
  EXPECT_NE(problem("").find("is not a directory"), std::string::npos);
}

TEST_F(ConfigPathsTest, WhatIsUnderTheStateDirMustBeKvsdsToo) {
  fs::create_directories(dir_ / "state/kvs.t");
  std::ofstream(path("state/kvs.t/1.snapshot")) << "x";
  ::chmod(path("state/kvs.t/1.snapshot").c_str(), 0666);
  EXPECT_NE(problem("").find(path("state/kvs.t/1.snapshot") + " has mode 0666"), std::string::npos)
      << problem("");
  ::chmod(path("state/kvs.t/1.snapshot").c_str(), 0640);
  fs::create_symlink("/etc/passwd", dir_ / "state/kvs.t/2.snapshot");
  EXPECT_NE(problem("").find("is a symbolic link"), std::string::npos) << problem("");
  fs::remove(dir_ / "state/kvs.t/2.snapshot");
  if (!root()) GTEST_SKIP() << "giving a file to another user needs root";
  ASSERT_EQ(::chown(path("state/kvs.t").c_str(), 65534, 65534), 0);
  EXPECT_NE(problem("").find(path("state/kvs.t") + " belongs to uid 65534"), std::string::npos)
      << problem("");
}

TEST_F(ConfigPathsTest, TheSocketsDirectoryMustBeADirectory) {
  std::ofstream(path("file")) << "x";
  const std::string p = problem("", "", path("file") + "/s.sock");
  EXPECT_NE(p.find("kvsd.socket_path"), std::string::npos) << p;
  EXPECT_NE(p.find(path("file") + " is not a directory"), std::string::npos) << p;
}

TEST_F(ConfigPathsTest, SeedFromMustBeAFileKvsdOwnsAlone) {
  std::string p = problem("", "seed_from = \"" + path("none.snapshot") + "\"\n");
  EXPECT_EQ(p.rfind("kvsd.toml:9:13: table[0].seed_from = ", 0), 0u) << p;
  EXPECT_NE(p.find("no such file"), std::string::npos) << p;
  p = problem("", "seed_from = \"" + path("state") + "\"\n");
  EXPECT_NE(p.find("is a directory"), std::string::npos) << p;
  std::ofstream(path("n.snapshot")) << "x";
  ::chmod(path("n.snapshot").c_str(), 0646);
  p = problem("", "seed_from = \"" + path("n.snapshot") + "\"\n");
  EXPECT_NE(p.find("has mode 0646"), std::string::npos) << p;
  ::chmod(path("n.snapshot").c_str(), 0644);
  EXPECT_EQ(problem("", "seed_from = \"" + path("n.snapshot") + "\"\n"), "");
  if (!root()) GTEST_SKIP() << "giving a file to another user needs root";
  ASSERT_EQ(::chown(path("n.snapshot").c_str(), 65534, 65534), 0);
  p = problem("", "seed_from = \"" + path("n.snapshot") + "\"\n");
  EXPECT_NE(p.find("belongs to uid 65534"), std::string::npos) << p;
}

}  // namespace
}  // namespace kvs::config
