#include "config/paths.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <pwd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

namespace kvs::config {
namespace {

uid_t kvs_user() {
  static const uid_t uid = [] {
    const passwd* pw = ::getpwnam("kvs");
    return pw != nullptr ? pw->pw_uid : static_cast<uid_t>(-1);
  }();
  return uid;
}

std::string mode_text(mode_t m) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(m & 07777));
  return buf;
}

// Checks the files and directories in `dir` (one level: a table's snapshot
// directory holds files only).
std::string why_untrusted_entries(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return dir + ": " + std::strerror(errno);
  DIR* d = ::fdopendir(fd);
  if (d == nullptr) {
    ::close(fd);
    return dir + ": " + std::strerror(errno);
  }
  std::string why;
  while (const dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    struct stat st {};
    if (::fstatat(::dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) continue;  // gone
    const std::string path = dir + "/" + name;
    if (S_ISLNK(st.st_mode)) {
      why = path + " is a symbolic link: kvsd follows none under state_dir; remove it";
    } else if (!S_ISREG(st.st_mode)) {
      why = path + " is not a regular file; remove it";
    } else if (const std::string w = why_untrusted(st); !w.empty()) {
      why = path + " " + w;
    }
    if (!why.empty()) break;
  }
  ::closedir(d);
  return why;
}

}  // namespace

std::string why_untrusted(const struct stat& st) {
  if (st.st_uid != 0 && st.st_uid != ::geteuid() && st.st_uid != kvs_user()) {
    return "belongs to uid " + std::to_string(st.st_uid) +
           ", not to kvsd's user or root: another user could have written it; chown it to "
           "kvsd's user (or remove it)";
  }
  if (st.st_mode & (S_IWGRP | S_IWOTH)) {
    return "has mode " + mode_text(st.st_mode) +
           ": others than its owner may write it; chmod go-w it";
  }
  return "";
}

std::string why_untrusted_dir(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    return errno == ENOENT ? "" : path + ": " + std::strerror(errno);
  }
  if (S_ISLNK(st.st_mode)) {
    return path + " is a symbolic link: kvsd follows none under state_dir; remove it";
  }
  if (!S_ISDIR(st.st_mode)) return path + " is not a directory; remove it";
  if (const std::string w = why_untrusted(st); !w.empty()) return path + " " + w;
  return why_untrusted_entries(path);
}

namespace {

Result<void> bad(const Config& c, const std::string& key, const std::string& value,
                 const std::string& why) {
  return make_error(Errc::kInvalidArgument, c.at(key) + " = \"" + value + "\": " + why);
}

Result<void> check_socket_dir(const Config& c) {
  const std::string dir = std::filesystem::path(c.socket_path).parent_path().string();
  struct stat st {};
  if (::stat(dir.c_str(), &st) == 0 && !S_ISDIR(st.st_mode)) {
    return bad(c, "kvsd.socket_path", c.socket_path,
               dir + " is not a directory; the socket's directory must be one");
  }
  return {};
}

// The segments' directory: it exists, is a directory kvsd can write, and
// only its owner (root or kvsd) may replace what is in it (a sticky bit, as
// /dev/shm has, or no write bit for others).
Result<void> check_shm_dir(const Config& c) {
  struct stat st {};
  if (::stat(c.shm_dir.c_str(), &st) != 0) {
    return bad(c, "kvsd.shm_dir", c.shm_dir,
               std::string(std::strerror(errno)) + "; mount a tmpfs there or name /dev/shm");
  }
  if (!S_ISDIR(st.st_mode)) {
    return bad(c, "kvsd.shm_dir", c.shm_dir, "is not a directory; name a tmpfs directory");
  }
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0 && (st.st_mode & S_ISVTX) == 0) {
    return bad(c, "kvsd.shm_dir", c.shm_dir,
               "others may write it without the sticky bit, so they could replace a table's "
               "segment; chmod +t it, or 0755");
  }
  if (::faccessat(AT_FDCWD, c.shm_dir.c_str(), W_OK | X_OK, AT_EACCESS) != 0) {
    return bad(c, "kvsd.shm_dir", c.shm_dir,
               std::string("kvsd cannot create segments in it (") + std::strerror(errno) +
                   "); give it to kvsd's user or group");
  }
  return {};
}

Result<void> check_state_dir(const Config& c) {
  if (c.state_dir.empty()) return {};
  struct stat st {};
  if (::stat(c.state_dir.c_str(), &st) != 0) {
    if (errno == ENOENT) return {};  // made at start (systemd's StateDirectory=, or kvsd)
    return bad(c, "kvsd.state_dir", c.state_dir, std::strerror(errno));
  }
  if (!S_ISDIR(st.st_mode)) {
    return bad(c, "kvsd.state_dir", c.state_dir, "is not a directory; name a directory");
  }
  if (const std::string w = why_untrusted(st); !w.empty()) {
    return bad(c, "kvsd.state_dir", c.state_dir,
               "the directory " + w + " (systemd's StateDirectory=kvs makes it right)");
  }
  if (::faccessat(AT_FDCWD, c.state_dir.c_str(), W_OK | X_OK, AT_EACCESS) != 0) {
    return bad(
        c, "kvsd.state_dir", c.state_dir,
        std::string("kvsd cannot write it (") + std::strerror(errno) + "); give it to kvsd's user");
  }
  for (const auto& t : c.tables) {
    const std::string dir = (std::filesystem::path(c.state_dir) / (c.shm_prefix + t.name)).string();
    if (const std::string w = why_untrusted_dir(dir); !w.empty()) {
      return bad(c, "kvsd.state_dir", c.state_dir, w);
    }
  }
  return {};
}

Result<void> check_seed(const Config& c, size_t index) {
  const TableConfig& t = c.tables[index];
  const std::string key = "table[" + std::to_string(index) + "].seed_from";
  struct stat st {};
  if (::lstat(t.seed_from.c_str(), &st) != 0) {
    return bad(c, key, t.seed_from,
               errno == ENOENT ? "no such file; name a snapshot file (kvsctl snapshot) or \"\""
                               : std::strerror(errno));
  }
  if (S_ISLNK(st.st_mode)) {
    return bad(c, key, t.seed_from, "is a symbolic link; name the snapshot file itself");
  }
  if (!S_ISREG(st.st_mode)) {
    return bad(c, key, t.seed_from,
               S_ISDIR(st.st_mode) ? "is a directory; name a snapshot file in it"
                                   : "is not a regular file; name a snapshot file");
  }
  if (const std::string w = why_untrusted(st); !w.empty()) {
    return bad(c, key, t.seed_from, "the file " + w + ": a snapshot decides what the table holds");
  }
  if (::faccessat(AT_FDCWD, t.seed_from.c_str(), R_OK, AT_EACCESS) != 0) {
    return bad(c, key, t.seed_from,
               std::string("kvsd cannot read it (") + std::strerror(errno) + ")");
  }
  return {};
}

}  // namespace

Result<void> check_paths(const Config& c) {
  if (auto ok = check_socket_dir(c); !ok) return ok;
  if (auto ok = check_shm_dir(c); !ok) return ok;
  if (auto ok = check_state_dir(c); !ok) return ok;
  for (size_t i = 0; i < c.tables.size(); ++i) {
    if (c.tables[i].seed_from.empty()) continue;
    if (auto ok = check_seed(c, i); !ok) return ok;
  }
  return {};
}

}  // namespace kvs::config
