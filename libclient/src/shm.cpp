#include "src/shm.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

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

std::string registry_name(const std::string& segment) { return segment + ".readers"; }
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

uint64_t process_start_time(pid_t pid) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/stat", static_cast<int>(pid));
  std::ifstream in(path);
  if (!in) return 0;
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // Field 2 (comm) may contain spaces and ')': parse from the last ')'.
  const size_t close = stat.rfind(')');
  if (close == std::string::npos) return 0;
  std::istringstream fields(stat.substr(close + 2));
  std::string field;
  // After comm: field 3 (state) is the first; start time is field 22.
  for (int i = 3; i <= 22; ++i) {
    if (!(fields >> field)) return 0;
  }
  return std::strtoull(field.c_str(), nullptr, 10);
}

uint64_t self_start_time() {
  // Not cached: a forked child has its own start time.
  return process_start_time(::getpid());
}

bool process_alive(uint32_t pid, uint32_t start_low32) {
  if (pid == 0) return false;
  if (::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) return false;
  const uint64_t start = process_start_time(static_cast<pid_t>(pid));
  if (start == 0) return false;  // gone between the two checks
  return static_cast<uint32_t>(start) == start_low32;
}

}  // namespace kvs::shm
