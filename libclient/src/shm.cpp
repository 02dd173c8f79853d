#include "src/shm.hpp"

#include <fcntl.h>
#include <pwd.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace kvs::shm {
namespace bip = boost::interprocess;

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

Error from_exception(const bip::interprocess_exception& e, const std::string& name) {
  const int native = e.get_native_error();
  switch (e.get_error_code()) {
    case bip::not_found_error:
      return Error{Errc::kNoTable, path_of(name) + " does not exist (is kvsd running?)"};
    case bip::security_error:
      return Error{Errc::kPermission,
                   path_of(name) + ": permission denied; add this user to the table's group"};
    default:
      break;
  }
  if (native == ENOENT) {
    return Error{Errc::kNoTable, path_of(name) + " does not exist (is kvsd running?)"};
  }
  if (native == EACCES || native == EPERM) {
    return Error{Errc::kPermission,
                 path_of(name) + ": permission denied; add this user to the table's group"};
  }
  return Error{Errc::kSystem, path_of(name) + ": " + e.what()};
}
}  // namespace

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

std::string path_of(const std::string& segment) { return "/dev/shm/" + segment; }

Result<std::unique_ptr<Mapping>> open_segment(const std::string& name, Access access) {
  try {
    auto m = std::make_unique<Mapping>();
    const bip::mode_t mode = access == Access::kReadOnly ? bip::read_only : bip::read_write;
    m->object = bip::shared_memory_object(bip::open_only, name.c_str(), mode);
    bip::offset_t size = 0;
    if (!m->object.get_size(size) || size <= 0) {
      return make_error(Errc::kCorrupt, path_of(name) + " is empty (being created, or not kvs)");
    }
    m->region = bip::mapped_region(m->object, mode);
    m->name = name;
    return m;
  } catch (const bip::interprocess_exception& e) {
    return from_exception(e, name);
  }
}

Result<std::unique_ptr<Mapping>> create_segment(const std::string& name, uint64_t bytes,
                                                mode_t mode, gid_t gid) {
  try {
    auto m = std::make_unique<Mapping>();
    m->object = bip::shared_memory_object(bip::create_only, name.c_str(), bip::read_write,
                                          bip::permissions(mode));
    m->name = name;
    // shm_open applies the umask; set the mode the caller asked for.
    if (::fchmod(m->fd(), mode) != 0) {
      const int err = errno;
      remove_segment(name);
      return make_error(Errc::kSystem, path_of(name) + ": fchmod: " + std::strerror(err));
    }
    if (gid != static_cast<gid_t>(-1) && ::fchown(m->fd(), static_cast<uid_t>(-1), gid) != 0) {
      const int err = errno;
      remove_segment(name);
      return make_error(Errc::kPermission, path_of(name) + ": cannot give it group " +
                                               std::to_string(gid) + ": " + std::strerror(err));
    }
    m->object.truncate(static_cast<bip::offset_t>(bytes));
    m->region = bip::mapped_region(m->object, bip::read_write);
    return m;
  } catch (const bip::interprocess_exception& e) {
    remove_segment(name);
    if (e.get_native_error() == ENOSPC || e.get_native_error() == ENOMEM) {
      return make_error(Errc::kNoMemory, path_of(name) + ": cannot allocate " +
                                             std::to_string(bytes) +
                                             " bytes of shared memory: " + e.what());
    }
    return from_exception(e, name);
  }
}

Result<void> rename_segment(const std::string& from, const std::string& to) {
  if (::rename(path_of(from).c_str(), path_of(to).c_str()) != 0) {
    return make_error(Errc::kSystem, "rename " + path_of(from) + " -> " + path_of(to) + ": " +
                                         std::strerror(errno));
  }
  return {};
}

void remove_segment(const std::string& name) { bip::shared_memory_object::remove(name.c_str()); }

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
  if (u != 0 && u != ::geteuid() && u != kvs_user_uid() && u != env_trusted_uid()) {
    return make_error(Errc::kPermission,
                      path_of(m.name) + " belongs to uid " + std::to_string(u) +
                          ", which is neither root, this user, nor the user 'kvs': not a table "
                          "kvsd made; refusing to read it (if kvsd runs as uid " +
                          std::to_string(u) + ", set KVS_TRUSTED_UID=" + std::to_string(u) + ")");
  }
  if (owner) *owner = u;
  return {};
}

}  // namespace kvs::shm
