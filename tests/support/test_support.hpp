// Helpers shared by kvs's tests: unique shared-memory names, waiting on a
// condition with a deadline, and real child processes.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace kvs::test {

// A shm prefix no other test (or test run) uses; removes its segments at the end.
class ShmScope {
 public:
  ShmScope() {
    static std::atomic<int> counter{0};
    prefix_ = "kvst" + std::to_string(::getpid()) + "_" + std::to_string(counter++) + ".";
  }
  ~ShmScope() {
    for (const auto& e : std::filesystem::directory_iterator("/dev/shm")) {
      if (e.path().filename().string().rfind(prefix_, 0) == 0) {
        std::error_code ec;
        std::filesystem::remove_all(e.path(), ec);
      }
    }
  }
  const std::string& prefix() const { return prefix_; }
  std::string path(const std::string& table) const { return "/dev/shm/" + prefix_ + table; }

 private:
  std::string prefix_;
};

// Polls `pred` until it holds or `timeout` passes; returns its last value.
inline bool wait_until(const std::function<bool()>& pred,
                       std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!pred()) {
    if (std::chrono::steady_clock::now() >= deadline) return pred();
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

// A child process running another program, with its stdout on a pipe (and
// its stderr in `stderr_file` if one is given).
class Child {
 public:
  explicit Child(const std::vector<std::string>& argv, const std::string& stderr_file = "") {
    int fds[2], ins[2];
    if (::pipe2(fds, O_CLOEXEC) != 0 || ::pipe2(ins, O_CLOEXEC) != 0) {
      throw std::runtime_error("pipe2");
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fds[1], STDOUT_FILENO);
    posix_spawn_file_actions_adddup2(&fa, ins[0], STDIN_FILENO);
    if (!stderr_file.empty()) {
      posix_spawn_file_actions_addopen(&fa, STDERR_FILENO, stderr_file.c_str(),
                                       O_WRONLY | O_CREAT | O_APPEND, 0644);
    }
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    const int rc = ::posix_spawn(&pid_, args[0], &fa, nullptr, args.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    ::close(fds[1]);
    ::close(ins[0]);
    out_ = fds[0];
    in_ = ins[1];
    if (rc != 0) throw std::runtime_error("posix_spawn " + argv[0] + ": " + std::strerror(rc));
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  ~Child() {
    if (pid_ > 0 && !reaped_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    ::close(out_);
    if (in_ >= 0) ::close(in_);
  }

  pid_t pid() const { return pid_; }

  // Writes one line to the child's stdin.
  void write_line(const std::string& line) {
    const std::string l = line + "\n";
    if (::write(in_, l.data(), l.size()) != static_cast<ssize_t>(l.size())) {
      throw std::runtime_error("write to child stdin");
    }
  }
  // Closes the child's stdin (EOF).
  void close_stdin() {
    if (in_ >= 0) ::close(in_);
    in_ = -1;
  }

  // Reads one line of the child's stdout (blocking; empty at EOF).
  std::string read_line() {
    std::string line;
    char c;
    while (::read(out_, &c, 1) == 1) {
      if (c == '\n') return line;
      line += c;
    }
    return line;
  }

  void kill(int sig) { ::kill(pid_, sig); }

  // True while the child has not exited (a zombie counts as exited).
  bool running() {
    if (reaped_) return false;
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      reaped_ = true;
      return false;
    }
    return true;
  }

  // Waits at most `timeout` for the exit; on timeout kills the child with
  // SIGKILL and returns -1. Else as wait().
  int wait_for(std::chrono::milliseconds timeout) {
    int status = 0;
    const bool exited =
        wait_until([&] { return ::waitpid(pid_, &status, WNOHANG) == pid_; }, timeout);
    if (!exited) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
      reaped_ = true;
      return -1;
    }
    reaped_ = true;
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    return 128 + WTERMSIG(status);
  }

  // Waits for the exit; returns the exit status, or 128 + signal.
  int wait() {
    int status = 0;
    ::waitpid(pid_, &status, 0);
    reaped_ = true;
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    return 128 + WTERMSIG(status);
  }

 private:
  pid_t pid_ = -1;
  int out_ = -1;
  int in_ = -1;
  bool reaped_ = false;
};

// Runs a program to its end: its exit status (as Child::wait_for) and its
// stdout (up to its first empty line).
struct Captured {
  int status;
  std::string output;
};
inline Captured run_capture(const std::vector<std::string>& argv,
                            std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
  Child c(argv);
  std::string out;
  for (std::string line; !(line = c.read_line()).empty();) out += line + "\n";
  return Captured{c.wait_for(timeout), out};
}

// The whole content of a file ("" if it cannot be read).
inline std::string slurp(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Path of a helper program built next to the test binary.
inline std::string helper(const std::string& name) {
  return (std::filesystem::read_symlink("/proc/self/exe").parent_path() / name).string();
}

// Removes its directory when the test program ends.
struct TempDir {
  std::string path;
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

// A directory every user may read holding copies of the helper programs
// `names` (next to the test binary, e.g. "table_worker" or "../kvsd") and of
// libkvs: the build tree may sit where other users cannot reach (a clone in
// a 0700 temporary directory, or under /root). Run a copy with
// LD_LIBRARY_PATH=<the directory>. One directory per test program.
inline std::string world_readable_helpers(const std::vector<std::string>& names) {
  static const TempDir dir = [&] {
    char tmpl[] = "/tmp/kvs-helpers-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) throw std::runtime_error("mkdtemp");
    namespace fs = std::filesystem;
    fs::permissions(tmpl, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                              fs::perms::others_read | fs::perms::others_exec);
    for (const auto& n : names) {
      fs::copy_file(helper(n), std::string(tmpl) + "/" + fs::path(n).filename().string());
    }
    fs::copy_file(helper("../libkvs.so.0"), std::string(tmpl) + "/libkvs.so.0");
    return TempDir{tmpl};
  }();
  return dir.path;
}

}  // namespace kvs::test
