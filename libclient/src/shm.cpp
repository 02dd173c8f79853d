#include "src/shm.hpp"

#include <fcntl.h>
#include <pwd.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace kvs::shm {

namespace {
bool valid_component(const std::string& s, size_t max) {
  if (s.empty() || s.size() > max) return false;
  for (char c : s) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
    if (!ok) return false;
  }
  return s != "." && s != "..";
}

Error from_errno(int err, const std::string& name) {
  if (err == ENOENT) {
    return Error{Errc::kNoTable, path_of(name) + " does not exist (is kvsd running?)"};
  }
  if (err == EACCES || err == EPERM) {
    return Error{Errc::kPermission,
                 path_of(name) + ": permission denied; add this user to the table's group"};
  }
  return Error{Errc::kSystem, path_of(name) + ": " + std::strerror(err)};
}

// Maps the whole of m's file.
Result<void> map_all(Mapping& m, Access access) {
  const int prot = access == Access::kReadOnly ? PROT_READ : PROT_READ | PROT_WRITE;
  void* p = ::mmap(nullptr, m.size_, prot, MAP_SHARED, m.fd_, 0);
  if (p == MAP_FAILED) {
    const int err = errno;
    if (err == ENOMEM) {
      return make_error(Errc::kNoMemory, path_of(m.name) + ": cannot map " +
                                             std::to_string(m.size_) +
                                             " bytes: " + std::strerror(err));
    }
    return from_errno(err, m.name);
  }
  m.addr_ = p;
  return {};
}
// Maps m's file, which must be a regular file that is not empty.
Result<void> map_regular(Mapping& m, Access access) {
  struct stat st {};
  if (::fstat(m.fd_, &st) != 0) return from_errno(errno, m.name);
  if (!S_ISREG(st.st_mode)) {
    return make_error(Errc::kCorrupt, path_of(m.name) + " is not a regular file: not a kvs table");
  }
  if (st.st_size <= 0) {
    return make_error(Errc::kCorrupt, path_of(m.name) + " is empty (being created, or not kvs)");
  }
  m.size_ = static_cast<uint64_t>(st.st_size);
  return map_all(m, access);
}
}  // namespace

Mapping::~Mapping() {
  if (addr_ != nullptr) ::munmap(addr_, size_);
  if (fd_ >= 0) ::close(fd_);
}

Result<std::string> segment_name(const std::string& prefix, const std::string& table) {
  if (!valid_component(table, 200)) {
    return make_error(Errc::kInvalidArgument,
                      "table name '" + table + "' must be 1..200 characters of [A-Za-z0-9._-]");
  }
  if (!prefix.empty() && !valid_component(prefix, 40)) {
    return make_error(Errc::kInvalidArgument,
                      "shm prefix '" + prefix + "' must be 0..40 characters of [A-Za-z0-9._-]");
  }
  return prefix + table;
}

Result<std::string> segment_in(const std::string& dir, const std::string& prefix,
                               const std::string& table) {
  auto name = segment_name(prefix, table);
  if (!name) return name;
  std::string d = dir;
  while (d.size() > 1 && d.back() == '/') d.pop_back();
  if (d.empty() || d == kDefaultDir) return name;
  if (d[0] != '/') {
    return make_error(Errc::kInvalidArgument,
                      "segment directory '" + dir + "' must be an absolute path");
  }
  return d + "/" + *name;
}

std::string path_of(const std::string& segment) {
  return !segment.empty() && segment[0] == '/' ? segment : std::string(kDefaultDir) + "/" + segment;
}

std::string dir_of(const std::string& segment) {
  if (segment.empty() || segment[0] != '/') return kDefaultDir;
  const size_t slash = segment.rfind('/');
  return slash == 0 ? "/" : segment.substr(0, slash);
}

Result<std::unique_ptr<Mapping>> open_segment(const std::string& name, Access access) {
  auto m = std::make_unique<Mapping>();
  m->name = name;
  // O_NONBLOCK: a FIFO planted under the name does not block the open.
  const int flags =
      (access == Access::kReadOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK;
  m->fd_ = ::open(path_of(name).c_str(), flags);
  if (m->fd_ < 0) return from_errno(errno, name);
  if (auto ok = map_regular(*m, access); !ok) return std::move(ok).error();
  return m;
}

Result<std::unique_ptr<Mapping>> adopt_segment(int fd, const std::string& name) {
  auto m = std::make_unique<Mapping>();
  m->name = name;
  m->fd_ = fd;
  if (auto ok = map_regular(*m, Access::kReadOnly); !ok) return std::move(ok).error();
  return m;
}

Result<std::unique_ptr<Mapping>> create_segment(const std::string& name, uint64_t bytes,
                                                mode_t mode, gid_t gid) {
  auto m = std::make_unique<Mapping>();
  m->name = name;
  m->fd_ = ::open(path_of(name).c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
  if (m->fd_ < 0) {
    const int err = errno;
    if (err == ENOSPC || err == ENOMEM) {
      return make_error(Errc::kNoMemory,
                        path_of(name) + ": cannot create it: " + std::strerror(err));
    }
    return err == EEXIST ? Error{Errc::kSystem, path_of(name) + " exists already"}
                         : from_errno(err, name);
  }
  auto fail = [&](Error e) {
    remove_segment(name);
    return e;
  };
  // open applies the umask; set the mode the caller asked for.
  if (::fchmod(m->fd_, mode) != 0) {
    return fail(Error{Errc::kSystem, path_of(name) + ": fchmod: " + std::strerror(errno)});
  }
  if (gid != static_cast<gid_t>(-1) && ::fchown(m->fd_, static_cast<uid_t>(-1), gid) != 0) {
    return fail(Error{Errc::kPermission, path_of(name) + ": cannot give it group " +
                                             std::to_string(gid) + ": " + std::strerror(errno)});
  }
  if (::ftruncate(m->fd_, static_cast<off_t>(bytes)) != 0) {
    const int err = errno;
    if (err == ENOSPC || err == ENOMEM || err == EFBIG) {
      return fail(Error{Errc::kNoMemory, path_of(name) + ": cannot allocate " +
                                             std::to_string(bytes) +
                                             " bytes of shared memory: " + std::strerror(err)});
    }
    return fail(from_errno(err, name));
  }
  m->size_ = bytes;
  if (auto ok = map_all(*m, Access::kReadWrite); !ok) return fail(std::move(ok).error());
  return m;
}

Result<void> rename_segment(const std::string& from, const std::string& to) {
  if (::rename(path_of(from).c_str(), path_of(to).c_str()) != 0) {
    return make_error(Errc::kSystem, "rename " + path_of(from) + " -> " + path_of(to) + ": " +
                                         std::strerror(errno));
  }
  return {};
}

void remove_segment(const std::string& name) { ::unlink(path_of(name).c_str()); }

namespace {
// The uid of the user "kvs" (kvsd's user in its unit), or -1.
uid_t kvs_user_uid() {
  static const uid_t uid = [] {
    passwd pw{};
    passwd* found = nullptr;
    char buf[1024];
    if (::getpwnam_r("kvs", &pw, buf, sizeof buf, &found) == 0 && found) return found->pw_uid;
    return static_cast<uid_t>(-1);
  }();
  return uid;
}

uid_t env_trusted_uid() {
  const char* s = std::getenv("KVS_TRUSTED_UID");
  if (s == nullptr || *s == '\0') return static_cast<uid_t>(-1);
  char* end = nullptr;
  const unsigned long v = std::strtoul(s, &end, 10);
  return *end == '\0' && v < 0xFFFFFFFFul ? static_cast<uid_t>(v) : static_cast<uid_t>(-1);
}

// The uid a user namespace shows for a uid it does not map.
uid_t overflow_uid() {
  static const uid_t uid = [] {
    unsigned long v = 65534;
    if (FILE* f = std::fopen("/proc/sys/kernel/overflowuid", "re")) {
      if (std::fscanf(f, "%lu", &v) != 1) v = 65534;
      std::fclose(f);
    }
    return static_cast<uid_t>(v);
  }();
  return uid;
}
}  // namespace

Result<void> check_segment_owner(const Mapping& m, uid_t* owner) {
  struct stat st {};
  if (::fstat(m.fd(), &st) != 0) {
    return make_error(Errc::kSystem, path_of(m.name) + ": fstat: " + std::strerror(errno));
  }
  char mode[8];
  std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
  if (st.st_mode & (S_IWGRP | S_IWOTH)) {
    return make_error(Errc::kPermission, path_of(m.name) +
                                             " is writable by others than its owner (uid " +
                                             std::to_string(st.st_uid) + ", mode " + mode +
                                             "); kvsd never makes it so: refusing to read it");
  }
  const uid_t u = st.st_uid;
  if (!trusted_owner(u)) {
    return make_error(Errc::kPermission,
                      path_of(m.name) + " belongs to uid " + std::to_string(u) +
                          ", which is neither root, this user, nor the user 'kvs': not a table "
                          "kvsd made; refusing to read it (if kvsd runs as uid " +
                          std::to_string(u) + ", set KVS_TRUSTED_UID=" + std::to_string(u) + ")");
  }
  if (owner) *owner = u;
  return {};
}

bool trusted_owner(uid_t u) {
  return u == 0 || u == ::geteuid() || u == kvs_user_uid() || u == env_trusted_uid();
}

bool trusted_peer(uid_t u) { return trusted_owner(u) || u == overflow_uid(); }

}  // namespace kvs::shm
