#include "src/registry.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>

#include "base/sys.hpp"
#include "src/shm.hpp"

namespace kvs::registry {
using namespace format;

std::string dir_path(const std::string& segment) { return shm::path_of(segment) + ".readers"; }

mode_t dir_mode(mode_t registry_mode) {
  mode_t m = S_ISVTX | S_IRWXU;
  if (registry_mode & S_IWGRP) m |= S_IWGRP | S_IXGRP;
  if (registry_mode & S_IWOTH) m |= S_IWOTH | S_IXOTH;
  return m;
}

Result<void> check_dir(const std::string& dir, uid_t owner) {
  struct stat st {};
  if (::lstat(dir.c_str(), &st) != 0) {
    if (errno == ENOENT) {
      return make_error(Errc::kNoTable, dir + " does not exist (is kvsd running?)");
    }
    return make_error(Errc::kPermission, dir + ": " + std::strerror(errno));
  }
  char mode[8];
  std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
  if (!S_ISDIR(st.st_mode)) {
    return make_error(Errc::kLayoutMismatch,
                      dir +
                          " is not a directory: a registry of an older layout; "
                          "restart kvsd with this version");
  }
  if (st.st_uid != owner || !(st.st_mode & S_ISVTX)) {
    return make_error(Errc::kPermission,
                      dir + " (owner uid " + std::to_string(st.st_uid) + ", mode " + mode +
                          ") was not made by the table's owner (uid " + std::to_string(owner) +
                          ") as kvsd makes it; refusing to read the table");
  }
  return {};
}

namespace {

Error create_error(const std::string& dir, const std::string& what, int err) {
  const std::string base =
      "cannot register as a reader in " + dir + ": " + what + ": " + std::strerror(err);
  switch (err) {
    case ENOENT:
      return Error{Errc::kNoTable, base + " (is kvsd running?)"};
    case EACCES:
    case EPERM:
    case EROFS:
      return Error{Errc::kPermission, base + "; add this user to the table's group"};
    case ENOSPC:
    case ENOMEM:
    case EDQUOT:
      return Error{Errc::kNoMemory, base + " (/dev/shm is full)"};
    case EMFILE:
    case ENFILE:
      return Error{Errc::kSystem, base +
                                      " (raise RLIMIT_NOFILE: a reader needs one descriptor "
                                      "per table it reads)"};
    default:
      return Error{Errc::kSystem, base};
  }
}

std::string random_hex() {
  uint64_t r = 0;
  if (::getrandom(&r, sizeof r, 0) != sizeof r) {
    r = static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()) ^
        (static_cast<uint64_t>(::getpid()) << 32);
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(r));
  return buf;
}

}  // namespace

namespace {

// Maps a reader file's descriptor read-write into f.
Result<void> map_file(int fd, uint8_t** map, const std::string& dir) {
  void* p = ::mmap(nullptr, kReaderFileBytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return create_error(dir, "map", errno);
  *map = static_cast<uint8_t*>(p);
  return {};
}

}  // namespace

Result<int> create_reader_file(const std::string& dir, uint64_t incarnation, int32_t pid,
                               std::string* path) {
  const std::string id = random_hex();
  const std::string tmp = dir + "/t." + id;
  Fd fd(::open(tmp.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0644));
  if (fd.fd < 0) return create_error(dir, "create", errno);
  auto fail = [&](const char* what, int err) {
    ::unlink(tmp.c_str());
    return create_error(dir, what, err);
  };
  // 0644 whatever the umask: kvsd, another user, must read it.
  if (::fchmod(fd.fd, 0644) != 0) return fail("chmod", errno);
  // Allocated now: a full /dev/shm is an error here, not a SIGBUS later.
  if (int err = ::posix_fallocate(fd.fd, 0, kReaderFileBytes); err != 0) {
    return fail("allocate", err);
  }
  struct flock lk {};
  lk.l_type = F_WRLCK;
  lk.l_whence = SEEK_SET;
  if (::fcntl(fd.fd, F_OFD_SETLK, &lk) != 0) return fail("lock", errno);
  ReaderFileHeader h{};
  h.magic = kReaderFileMagic;
  h.layout_version = kLayoutVersion;
  h.slot_count = kReaderFileSlots;
  h.fingerprint = layout_fingerprint();
  h.incarnation = incarnation;
  h.pid = pid;
  h.created_unix_ns = format::now_unix_ns();
  if (::pwrite(fd.fd, &h, sizeof h, 0) != static_cast<ssize_t>(sizeof h)) {
    return fail("write", errno);
  }
  // kvsd reads only final names: it sees the header complete and the lock held.
  const std::string final_path = dir + "/r." + id;
  if (::rename(tmp.c_str(), final_path.c_str()) != 0) return fail("rename", errno);
  if (path) *path = final_path;
  const int out = fd.fd;
  fd.fd = -1;
  return out;
}

Result<std::unique_ptr<ReaderFile>> ReaderFile::create(const std::string& dir,
                                                       uint64_t incarnation) {
  std::unique_ptr<ReaderFile> f(new ReaderFile());
  auto fd = create_reader_file(dir, incarnation, static_cast<int32_t>(::getpid()), &f->path_);
  if (!fd) return std::move(fd).error();
  f->fd_ = *fd;  // the destructor unlinks path_
  if (auto ok = map_file(f->fd_, &f->map_, dir); !ok) return std::move(ok).error();
  return f;
}

Result<std::unique_ptr<ReaderFile>> ReaderFile::adopt(int fd, uint64_t incarnation) {
  std::unique_ptr<ReaderFile> f(new ReaderFile());
  f->fd_ = fd;
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) ||
      static_cast<uint64_t>(st.st_size) < kReaderFileBytes) {
    return make_error(Errc::kCorrupt, "kvsd handed over something that is not a reader file");
  }
  if (auto ok = map_file(fd, &f->map_, "a handed-over reader file"); !ok) {
    return std::move(ok).error();
  }
  ReaderFileHeader h{};
  std::memcpy(&h, f->map_, sizeof h);
  if (h.magic != kReaderFileMagic || h.incarnation != incarnation) {
    return make_error(Errc::kCorrupt, "kvsd handed over a reader file of another segment");
  }
  return f;
}

ReaderFile::~ReaderFile() {
  if (fd_ < 0) return;
  if (!path_.empty()) ::unlink(path_.c_str());
  if (map_) ::munmap(map_, kReaderFileBytes);
  ::close(fd_);
}

ReaderSlot& ReaderFile::slot(uint32_t i) const {
  return reinterpret_cast<ReaderSlot*>(map_ + sizeof(ReaderFileHeader))[i];
}

ReaderSlot* ReaderFile::take_unused() {
  if (used_ == kReaderFileSlots) return nullptr;
  auto* h = reinterpret_cast<ReaderFileHeader*>(map_);
  // seq_cst: the count comes before the new slot's first announcement (a
  // seq_cst exchange) in the single total order, not only on x86 and ARM
  // where a release store would do: kvsd reads only the slots counted (see
  // writer/reader_roster.cpp). Once per slot, so its cost does not matter.
  __atomic_store_n(&h->slots_handed_out, used_ + 1, __ATOMIC_SEQ_CST);
  return &slot(used_++);
}

void ReaderFile::abandon() {
  if (map_) ::munmap(map_, kReaderFileBytes);
  if (fd_ >= 0) ::close(fd_);
  map_ = nullptr;
  fd_ = -1;
}

}  // namespace kvs::registry
