// kvsd --check-config (the real binary) on configs that are wrong for the
// file or for the host: each exits 78 with file:line:key and the way out,
// as kvsd's start would. Prints a line per case (the table in the notes).
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "support/test_support.hpp"

namespace kvs {
namespace {

namespace fs = std::filesystem;

class CheckConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("kvs-check-" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_ / "state");
    ::chmod(dir_.c_str(), 0755);
    ::chmod((dir_ / "state").c_str(), 0750);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  // A config of table "t" with `kvsd`, `kafka` and `table` lines added.
  std::string config(const std::string& kvsd, const std::string& kafka = "",
                     const std::string& table = "", bool with_kafka = true) const {
    std::string s = "[kvsd]\nsocket_path = \"" + path("s.sock") + "\"\nstate_dir = \"" +
                    path("state") + "\"\n" + kvsd;
    if (with_kafka) s += "[kafka]\n\"bootstrap.servers\" = \"127.0.0.1:9\"\n" + kafka;
    return s + "[[table]]\nname = \"t\"\ntopic = \"t\"\n" + table;
  }
  struct Run {
    int exit_code;
    std::string err;
  };
  // kvsd --check-config on `text`, as `user` (setpriv) if given: then a
  // copy of kvsd that user can reach.
  Run check(const std::string& text, const std::string& user = "") {
    const std::string file = path("kvsd.toml"), err = path("err");
    std::ofstream(file) << text;
    ::chmod(file.c_str(), 0644);
    std::string cmd = "'" + test::helper("../kvsd") + "'";
    if (!user.empty()) {
      const std::string dir = test::world_readable_helpers({"../kvsd"});
      cmd = "setpriv --reuid=" + user + " --regid=" + user +
            " --clear-groups env LD_LIBRARY_PATH='" + dir + "' '" + dir + "/kvsd'";
    }
    cmd += " --check-config --config '" + file + "' 2> '" + err + "' > /dev/null";
    const int st = std::system(cmd.c_str());
    return {WIFEXITED(st) ? WEXITSTATUS(st) : 128, test::slurp(err)};
  }
  fs::path dir_;
};

TEST_F(CheckConfigTest, BrokenConfigsExit78NamingFileLineAndKey) {
  struct Case {
    std::string name;
    std::function<std::string()> make;  // sets the host up, returns the config
    int exit_code;
    std::vector<std::string> says;
    bool needs_root = false;
  };
  const std::vector<Case> cases = {
      {"no [kafka] section",
       [&] { return config("", "", "", false); },
       78,
       {"kvsd.toml: no [kafka] \"bootstrap.servers\""}},
      {"state_dir is a regular file",
       [&] {
         fs::remove_all(dir_ / "state");
         std::ofstream(path("state")) << "x";
         return config("");
       },
       78,
       {"kvsd.toml:3:13: kvsd.state_dir", "is not a directory"}},
      {"state_dir kvsd cannot write",
       [&] {
         ::chmod((dir_ / "state").c_str(), 0755);  // root's; kvsd runs as nobody
         return config("");
       },
       78,
       {"kvsd.toml:3:13: kvsd.state_dir", "kvsd cannot write it"},
       true},
      {"state_dir others may write",
       [&] {
         ::chmod((dir_ / "state").c_str(), 01777);
         return config("");
       },
       78,
       {"kvsd.toml:3:13: kvsd.state_dir", "has mode 1777"}},
      {"a table's snapshot directory of another user",
       [&] {
         fs::create_directories(dir_ / "state/kvs.t");
         EXPECT_EQ(::chown(path("state/kvs.t").c_str(), 65534, 65534), 0);
         return config("");
       },
       78,
       {"kvsd.toml:3:13: kvsd.state_dir", "kvs.t belongs to uid 65534"},
       true},
      {"the socket's directory is a regular file",
       [&] {
         std::ofstream(path("f")) << "x";
         std::string c = config("");
         c.replace(c.find(path("s.sock")), path("s.sock").size(), path("f") + "/s.sock");
         return c;
       },
       78,
       {"kvsd.toml:2:15: kvsd.socket_path", "is not a directory"}},
      {"seed_from missing",
       [&] { return config("", "", "seed_from = \"" + path("none.snapshot") + "\"\n"); },
       78,
       {"kvsd.toml:9:13: table[0].seed_from", "no such file"}},
      {"seed_from a directory",
       [&] { return config("", "", "seed_from = \"" + path("state") + "\"\n"); },
       78,
       {"kvsd.toml:9:13: table[0].seed_from", "is a directory"}},
      {"seed_from others may write",
       [&] {
         std::ofstream(path("n.snapshot")) << "x";
         ::chmod(path("n.snapshot").c_str(), 0666);
         return config("", "", "seed_from = \"" + path("n.snapshot") + "\"\n");
       },
       78,
       {"kvsd.toml:9:13: table[0].seed_from", "has mode 0666"}},
      {"topic \"bad topic!\"",
       [&] {
         std::string c = config("");
         c.replace(c.rfind("topic = \"t\""), 11, "topic = \"bad topic!\"");
         return c;
       },
       78,
       {"kvsd.toml:8:9: table[0].topic = \"bad topic!\"", "Kafka does not allow"}},
      {"log_level \"loud\"",
       [&] { return config("log_level = \"loud\"\n"); },
       78,
       {"kvsd.toml:4:13: kvsd.log_level = \"loud\"", "must be debug, info, warning or error"}},
      {"state_dir \"\"",
       [&] {
         std::string c = config("");
         c.replace(c.find(path("state")), path("state").size(), "");
         return c;
       },
       78,
       {"kvsd.toml:3:13: kvsd.state_dir = \"\"", "snapshot_interval_s = 0"}},
      {"shm_dir missing",
       [&] { return config("shm_dir = \"" + path("no-such-tmpfs") + "\"\n"); },
       78,
       {"kvsd.toml:4:11: kvsd.shm_dir", "No such file or directory"}},
      {"shm_dir others may write without the sticky bit",
       [&] {
         fs::create_directories(dir_ / "segments");
         ::chmod(path("segments").c_str(), 0777);
         return config("shm_dir = \"" + path("segments") + "\"\n");
       },
       78,
       {"kvsd.toml:4:11: kvsd.shm_dir", "sticky bit"}},
      {"shm_dir relative",
       [&] { return config("shm_dir = \"segments\"\n"); },
       78,
       {"kvsd.toml:4:11: kvsd.shm_dir = \"segments\"", "must be an absolute path"}},
      {"shm_dir a sticky tmpfs directory (as /dev/shm)",
       [&] {
         fs::create_directories(dir_ / "segments");
         ::chmod(path("segments").c_str(), 01777);
         return config("shm_dir = \"" + path("segments") + "\"\n");
       },
       0,
       {}},
      {"a [kafka] value as a TOML integer (taken as its text)",
       [&] { return config("", "\"fetch.wait.max.ms\" = 10\n"); },
       0,
       {}},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    SetUp();
    if (c.needs_root && ::geteuid() != 0) {
      std::printf("[ config   ] %s: skipped (needs root)\n", c.name.c_str());
      continue;
    }
    const Run r = check(c.make(), c.name == "state_dir kvsd cannot write" ? "65534" : "");
    const std::string first = r.err.substr(0, r.err.find('\n'));
    std::printf("[ config   ] %s: exit %d: %s\n", c.name.c_str(), r.exit_code,
                first.empty() ? "OK" : first.c_str());
    EXPECT_EQ(r.exit_code, c.exit_code) << r.err;
    for (const auto& s : c.says) EXPECT_NE(r.err.find(s), std::string::npos) << r.err;
  }
}

}  // namespace
}  // namespace kvs
