#include "writer/reader_roster.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <limits>

#include "base/sys.hpp"
#include "format/layout.hpp"
#include "format/sanitizers.hpp"
#include "src/registry.hpp"
#include "src/shm.hpp"

namespace kvs {
using namespace format;

namespace {

// A reader that died between creating its file and renaming it leaves "t.*"
// behind; one this old without a lock is such a leftover.
constexpr int64_t kTempLeftoverAge_s = 60;

bool is_reader_name(const char* name) { return name[0] == 'r' && name[1] == '.'; }
bool is_temp_name(const char* name) { return name[0] == 't' && name[1] == '.'; }

// An OFD write lock test: true if any other open file description holds a
// lock on the file, or if the kernel cannot tell (uncertainty counts as alive).
bool locked(int fd) {
  struct flock lk {};
  lk.l_type = F_WRLCK;
  lk.l_whence = SEEK_SET;
  if (::fcntl(fd, F_OFD_GETLK, &lk) != 0) return true;
  return lk.l_type != F_UNLCK;
}

// Makes `dir` a directory of this user's, replacing a registry file of
// layout 1 this user left; refuses anything another user made.
Result<void> make_dir(const std::string& dir) {
  for (int attempt = 0; attempt < 4; ++attempt) {
    struct stat st {};
    if (::lstat(dir.c_str(), &st) != 0) {
      if (errno != ENOENT) return access_error(dir, errno);
      if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST)
        return access_error("mkdir " + dir, errno);
      continue;
    }
    if (st.st_uid != ::geteuid()) {
      return make_error(Errc::kPermission,
                        dir + " belongs to uid " + std::to_string(st.st_uid) +
                            ", not to kvsd (uid " + std::to_string(::geteuid()) +
                            "): another user made it; remove it (as root) and restart kvsd");
    }
    if (S_ISDIR(st.st_mode)) return {};
    if (::unlink(dir.c_str()) != 0) return access_error("unlink " + dir, errno);
  }
  return make_error(Errc::kBusy, dir + " keeps changing; another kvsd?");
}

}  // namespace

Result<std::shared_ptr<ReaderRoster>> ReaderRoster::open(const std::string& segment,
                                                         mode_t registry_mode, gid_t group,
                                                         uint32_t max_files) {
  std::shared_ptr<ReaderRoster> r(new ReaderRoster());
  r->dir_ = registry::dir_path(segment);
  r->max_files_ = max_files;
  if (auto ok = make_dir(r->dir_); !ok) return std::move(ok).error();
  r->dir_fd_ = ::open(r->dir_.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (r->dir_fd_ < 0) return access_error("open " + r->dir_, errno);
  struct stat st {};
  if (::fstat(r->dir_fd_, &st) != 0 || st.st_uid != ::geteuid()) {
    return make_error(Errc::kPermission, r->dir_ + " changed owner while kvsd opened it");
  }
  // The writer's lock. Readers cannot open the directory (no read
  // permission), so no reader can take or hold it.
  if (::flock(r->dir_fd_, LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) {
      return make_error(Errc::kBusy, "the table is held by another writer (" + r->dir_ +
                                         " is locked); stop the other kvsd");
    }
    return access_error("flock " + r->dir_, errno);
  }
  if (group != static_cast<gid_t>(-1) && st.st_gid != group &&
      ::fchown(r->dir_fd_, static_cast<uid_t>(-1), group) != 0) {
    return make_error(Errc::kPermission, r->dir_ + ": cannot give it group " +
                                             std::to_string(group) + ": " + std::strerror(errno));
  }
  if (::fchmod(r->dir_fd_, registry::dir_mode(registry_mode)) != 0) {
    return access_error("chmod " + r->dir_, errno);
  }
  r->inotify_fd_ = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (r->inotify_fd_ >= 0 &&
      ::inotify_add_watch(r->inotify_fd_, r->dir_.c_str(),
                          IN_CREATE | IN_MOVED_TO | IN_DELETE | IN_MOVED_FROM | IN_ONLYDIR) < 0) {
    ::close(r->inotify_fd_);
    r->inotify_fd_ = -1;
  }
  return r;
}

ReaderRoster::~ReaderRoster() {
  while (!files_.empty()) forget(files_.begin());
  if (listing_) ::closedir(listing_);
  if (inotify_fd_ >= 0) ::close(inotify_fd_);
  if (dir_fd_ >= 0) ::close(dir_fd_);
}

void ReaderRoster::set_current(uint64_t incarnation) {
  if (incarnation == current_) return;
  const bool first = current_ == 0;
  if (!first && (events_left_ || uncertain_.count(current_))) {
    // What kvsd could not check yet may be readers of the segment that was
    // current: it stays uncertain until a listing begun from here has ended.
    auto& u = uncertain_[current_];
    if (u.since_unix_ns == 0) u.since_unix_ns = now_unix_ns();
    u.until_pass_after = true;
    u.after_pass = pass_;
    start_listing();
  }
  current_ = incarnation;
  other_tracked_ = static_cast<uint32_t>(files_.size()) - tracked(incarnation);
  if (!first) return;
  // Until the directory was listed once, any file there may be a reader.
  uncertain_[incarnation] = Uncertain{now_unix_ns(), 0, true, pass_};
  start_listing();
  continue_listing(std::chrono::steady_clock::now() + kRefreshBudget);
}

void ReaderRoster::doubt(uint64_t incarnation) {
  auto [it, added] = uncertain_.try_emplace(incarnation);
  if (added) it->second.since_unix_ns = now_unix_ns();
  it->second.renewed_pass = pass_;
}

uint32_t ReaderRoster::limit_for(uint64_t incarnation) const {
  return incarnation == current_ ? max_files_ : kOtherSegmentsFactor * max_files_;
}

void ReaderRoster::add(const std::string& name, uint64_t pass) {
  if (auto it = files_.find(name); it != files_.end()) {
    if (pass > 0) it->second.listed_pass = pass;
    return;
  }
  const int fd =
      ::openat(dir_fd_, name.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY);
  if (fd < 0) {
    // Gone already, or not a file (a symlink): neither announces anything.
    // Anything else (no descriptor left) may be a reader kvsd cannot see.
    if (errno != ENOENT && errno != ELOOP) doubt(current_);
    return;
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return;
  }
  // A reader locks its file before it renames it into place and holds the
  // lock while it lives: an "r.*" file nobody locks is a dead reader's.
  if (!locked(fd)) {
    if (::unlinkat(dir_fd_, name.c_str(), 0) == 0) ++dead_removed_;
    ::close(fd);
    return;
  }
  File f;
  f.fd = fd;
  f.incarnation = current_;
  f.listed_pass = pass > 0 ? pass : pass_;
  ReaderFileHeader h{};
  if (::pread(fd, &h, sizeof h, 0) == static_cast<ssize_t>(sizeof h) &&
      h.magic == kReaderFileMagic && h.layout_version == kLayoutVersion &&
      h.fingerprint == layout_fingerprint() && h.slot_count == kReaderFileSlots) {
    f.header_ok = true;
    f.incarnation = h.incarnation;
    f.pid = h.pid;
  }
  const bool other = f.incarnation != current_;
  if ((other ? other_tracked_ : tracked(current_)) >= limit_for(f.incarnation)) {
    ::close(fd);
    doubt(f.incarnation);
    return;
  }
#ifdef KVS_TSAN
  if (f.header_ok && st.st_size >= static_cast<off_t>(kReaderFileBytes)) {
    void* p = ::mmap(nullptr, kReaderFileBytes, PROT_READ, MAP_SHARED, fd, 0);
    if (p != MAP_FAILED) f.map = static_cast<const uint8_t*>(p);
  }
#endif
  ++tracked(f.incarnation);
  if (other) ++other_tracked_;
  files_.emplace(name, f);
}

void ReaderRoster::remove(Files::iterator it) {
  ::unlinkat(dir_fd_, it->first.c_str(), 0);
  forget(it);
}

void ReaderRoster::forget(Files::iterator it) {
  const File& f = it->second;
  if (f.map) ::munmap(const_cast<uint8_t*>(f.map), kReaderFileBytes);
  ::close(f.fd);
  if (--tracked(f.incarnation) == 0) per_incarnation_.erase(f.incarnation);
  if (f.incarnation != current_) --other_tracked_;
  files_.erase(it);
}

void ReaderRoster::start_listing() {
  if (listing_) return;
  ++pass_;
  const int fd = ::openat(dir_fd_, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  listing_ = fd < 0 ? nullptr : ::fdopendir(fd);
  if (listing_ == nullptr) {
    if (fd >= 0) ::close(fd);
    doubt(current_);  // renewed by every listing that cannot begin
    passes_done_ = pass_;
  }
}

void ReaderRoster::continue_listing(std::chrono::steady_clock::time_point until) {
  const time_t now = ::time(nullptr);
  for (size_t n = 1; listing_ != nullptr; ++n) {
    if (n % kCheckEvery == 0 && std::chrono::steady_clock::now() >= until) return;
    errno = 0;
    const dirent* e = ::readdir(listing_);
    if (e == nullptr) {
      if (errno != 0) doubt(current_);
      end_listing();
      return;
    }
    if (is_reader_name(e->d_name)) {
      add(e->d_name, pass_);
    } else if (is_temp_name(e->d_name)) {
      // A reader that died while creating its file left it.
      const int fd =
          ::openat(dir_fd_, e->d_name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY);
      if (fd < 0) continue;
      struct stat st {};
      if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && now - st.st_ctime > kTempLeftoverAge_s &&
          !locked(fd)) {
        ::unlinkat(dir_fd_, e->d_name, 0);
      }
      ::close(fd);
    }
  }
}

void ReaderRoster::end_listing() {
  ::closedir(listing_);
  listing_ = nullptr;
  const uint64_t done = pass_;
  passes_done_ = done;
  // Tracked files this whole listing did not meet are gone (their events
  // may have been dropped).
  for (auto it = files_.begin(); it != files_.end();) {
    if (it->second.listed_pass < done) {
      forget(it++);
    } else {
      ++it;
    }
  }
  bool again = false;
  for (auto it = uncertain_.begin(); it != uncertain_.end();) {
    const Uncertain& u = it->second;
    const bool waits = u.until_pass_after && u.after_pass >= done;
    again = again || waits;
    if (u.renewed_pass == done || waits) {
      ++it;
    } else {
      it = uncertain_.erase(it);
    }
  }
  if (again) start_listing();
}

void ReaderRoster::refresh() {
  using clock = std::chrono::steady_clock;
  if (inotify_fd_ < 0) {
    // No events: a whole listing every time, as the protocol needs.
    start_listing();
    continue_listing(clock::time_point::max());
    return;
  }
  const auto until = clock::now() + kRefreshBudget;
  alignas(inotify_event) char buf[4096];
  for (size_t handled = 0;;) {
    if (handled >= kCheckEvery && clock::now() >= until) break;
    const ssize_t n = ::read(inotify_fd_, buf, sizeof buf);
    if (n <= 0) break;
    for (ssize_t off = 0; off < n;) {
      const auto* ev = reinterpret_cast<const inotify_event*>(buf + off);
      off += static_cast<ssize_t>(sizeof(inotify_event) + ev->len);
      ++handled;
      if (ev->mask & IN_Q_OVERFLOW) {
        // Events were dropped: the current segment is uncertain until a
        // listing that begins after this has ended.
        uncertain_[current_] = Uncertain{now_unix_ns(), 0, true, pass_};
        if (!listing_) start_listing();
      }
      if (ev->len == 0 || !is_reader_name(ev->name)) continue;
      if (ev->mask & (IN_CREATE | IN_MOVED_TO)) {
        add(ev->name, listing_ ? pass_ : 0);
      } else if (auto it = files_.find(ev->name); it != files_.end()) {
        forget(it);
      }
    }
  }
  int pending = 0;
  events_left_ = ::ioctl(inotify_fd_, FIONREAD, &pending) != 0 || pending > 0;
  continue_listing(until);
}

bool ReaderRoster::alive(const File& f) const { return locked(f.fd); }

// A reader's threads take slots in order, and the owner publishes how many
// it handed out (release) before a new slot's thread announces anything. So
// a read that sees the count N and stops after slot N misses no slot that
// could hold an announcement older than the read (on x86, a store to slot
// N+1 is not visible before the count that precedes it). Reading only those
// slots makes a reader process with one reading thread cost a 128-byte copy.
int ReaderRoster::read_slots(File& f, uint8_t* buf) const {
  if (f.map) {
    std::memcpy(buf, f.map, sizeof(ReaderFileHeader));
    for (uint32_t i = 0; i < kReaderFileSlots; ++i) {
      const auto* slot = reinterpret_cast<const ReaderSlot*>(f.map + sizeof(ReaderFileHeader)) + i;
      const uint64_t e = slot->epoch.load(std::memory_order_acquire);
      std::memcpy(buf + sizeof(ReaderFileHeader) + i * sizeof(ReaderSlot), &e, sizeof e);
    }
    return static_cast<int>(kReaderFileSlots);
  }
  const auto line = static_cast<ssize_t>(kCacheLine);
  ssize_t want = line * (1 + std::min(f.slots_seen, kReaderFileSlots));
  if (::pread(f.fd, buf, want, 0) != want) return -1;
  ReaderFileHeader h;
  std::memcpy(&h, buf, sizeof h);
  const uint32_t handed_out = std::min(h.slots_handed_out, kReaderFileSlots);
  if (line * (1 + handed_out) > want) {
    const ssize_t more = line * (1 + handed_out) - want;
    if (::pread(f.fd, buf + want, more, want) != more) return -1;
  }
  f.slots_seen = std::max<uint32_t>(handed_out, 1);
  return static_cast<int>(handed_out);
}

uint64_t ReaderRoster::min_announced(uint64_t incarnation, uint64_t oldest_retired,
                                     bool check_dead) {
  refresh();
  uint64_t min_epoch = std::numeric_limits<uint64_t>::max();
  holder_ = ReaderHolder{};
  const auto u = uncertain_.find(incarnation);
  if (u != uncertain_.end() || (incarnation == current_ && events_left_)) {
    min_epoch = 1;
    holder_ = {1, 0, "(registry entries kvsd could not check)",
               u != uncertain_.end() ? u->second.since_unix_ns : now_unix_ns()};
  }
  alignas(kCacheLine) uint8_t buf[kReaderFileBytes];
  for (auto it = files_.begin(); it != files_.end();) {
    File& f = it->second;
    if (f.incarnation != incarnation) {
      ++it;  // a reader of another segment of this table
      continue;
    }
    const uint64_t file_min = file_min_epoch(f, buf);
    if (file_min <= oldest_retired && check_dead && !alive(f)) {
      ++dead_removed_;
      remove(it++);
      continue;
    }
    if (file_min != f.min_seen) {
      f.min_seen = file_min;
      f.min_since_unix_ns = now_unix_ns();
    }
    if (file_min < min_epoch) {
      min_epoch = file_min;
      holder_ = {file_min, f.pid, it->first, f.min_since_unix_ns};
    }
    ++it;
  }
  return min_epoch;
}

// The oldest epoch a file's slots announce (UINT64_MAX: none). A file that
// is not one libkvs writes, or that its owner shrank, announces 1 for as
// long as its owner lives.
uint64_t ReaderRoster::file_min_epoch(File& f, uint8_t* buf) const {
  const int slots = f.header_ok ? read_slots(f, buf) : -1;
  if (slots < 0) return 1;
  uint64_t file_min = std::numeric_limits<uint64_t>::max();
  for (int i = 0; i < slots; ++i) {
    uint64_t e;
    std::memcpy(&e, buf + sizeof(ReaderFileHeader) + i * sizeof(ReaderSlot), sizeof e);
    if (e != 0) file_min = std::min(file_min, e);
  }
  return file_min;
}

void ReaderRoster::forget_holders() {
  for (auto& [name, f] : files_) f.min_seen = 0;
  holder_ = ReaderHolder{};
}

uint32_t ReaderRoster::sweep() {
  uint32_t removed = 0;
  for (auto it = files_.begin(); it != files_.end();) {
    if (alive(it->second)) {
      ++it;
    } else {
      ++removed;
      remove(it++);
    }
  }
  dead_removed_ += removed;
  if (inotify_fd_ >= 0) start_listing();  // finds what is not tracked, a slice per call
  return removed;
}

ReaderCounts ReaderRoster::counts(uint64_t incarnation) {
  refresh();
  ReaderCounts c;
  if (uncertain_.count(incarnation) || (incarnation == current_ && events_left_)) ++c.unchecked;
  alignas(kCacheLine) uint8_t buf[kReaderFileBytes];
  for (auto& [name, f] : files_) {
    if (f.incarnation != incarnation) continue;
    const int slots = f.header_ok ? read_slots(f, buf) : -1;
    if (slots < 0) {
      ++c.unchecked;
      continue;
    }
    ++c.processes;
    ReaderFileHeader h;
    std::memcpy(&h, buf, sizeof h);
    c.slots_used += std::min(h.slots_handed_out, kReaderFileSlots);
    for (int i = 0; i < slots; ++i) {
      uint64_t e;
      std::memcpy(&e, buf + sizeof(ReaderFileHeader) + i * sizeof(ReaderSlot), sizeof e);
      if (e != 0) ++c.reading;
    }
  }
  return c;
}

uint32_t ReaderRoster::reading(uint64_t incarnation) {
  if (uncertain_.count(incarnation)) return 1;
  uint32_t n = 0;
  alignas(kCacheLine) uint8_t buf[kReaderFileBytes];
  for (auto& [name, f] : files_) {
    if (f.incarnation != incarnation || !alive(f)) continue;
    const uint64_t e = file_min_epoch(f, buf);
    if (e != std::numeric_limits<uint64_t>::max()) ++n;
  }
  return n;
}

}  // namespace kvs
