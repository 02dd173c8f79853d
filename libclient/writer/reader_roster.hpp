// kvsd's view of a table's reader registry: the directory it owns (and locks:
// the writer's lock) and every reader file in it. Internal to the writer.
//
// Everything in the directory is untrusted input: readers write their own
// files, and any process in the readers' group can create entries. So the
// roster only reads (pread, never a mapping another process could shrink),
// never writes a reader's file, treats what it cannot read or check as a
// live reader announcing epoch 1 (which only holds reuse back), removes files
// only when no process holds their lock, and bounds what it does:
// - Work per call: about kRefreshBudget of inotify events and directory
//   entries (a listing runs in slices), so that a flood of entries costs
//   the apply loop a bounded time per round, for this table and every
//   other.
// - Descriptors: at most max_files per segment (incarnation), and
//   kOtherSegmentsFactor times that for the files of segments replaced
//   since; a segment's files never count against another segment's limit.
// - Uncertainty stays with one segment. An entry kvsd cannot track or
//   check (a file it cannot open, one past the limit, one whose header does
//   not check, events inotify dropped) makes the segment it belongs to, or
//   the segment readers opened when kvsd met it, count as read at epoch 1
//   until a listing finds it gone: a segment replaced since (a growth) is
//   free of it. (A reader can hold back what it can see, nothing more.)
//
// Discovery is ordered with the epoch protocol: the writer increments the
// epoch and fences before min_announced(), which first drains inotify. A
// file renamed into place after that drain belongs to a reader whose first
// announcement follows the increment, so it cannot see what was retired
// before (docs/format.md). While events are left in the queue, or after the
// queue overflowed and until a listing that began after it ends, the
// current segment is uncertain.
#pragma once

#include <dirent.h>
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "kvs/result.hpp"

namespace kvs {

struct ReaderCounts {
  uint32_t processes = 0;   // live reader files of the incarnation
  uint32_t slots_used = 0;  // slots their owners handed to threads
  uint32_t reading = 0;     // slots inside a read
  uint32_t unchecked = 0;   // files (or entries) kvsd could not read: counted alive
};

// The reader that announced the oldest epoch at the last min_announced():
// the one that holds reuse back longest, for the log and monitoring.
struct ReaderHolder {
  uint64_t epoch = 0;  // 0: no reader announced anything
  int32_t pid = 0;     // from its file's header, in its own pid namespace; 0: unknown
  std::string file;    // the entry in the registry directory
  // When the roster first saw this file announce `epoch` (it looks only
  // while memory waits for reuse): how long the reader has held memory back.
  uint64_t since_unix_ns = 0;
};

class ReaderRoster {
 public:
  // The time one call spends on inotify events and directory entries
  // (checked every kCheckEvery of them).
  static constexpr std::chrono::microseconds kRefreshBudget{1000};
  static constexpr size_t kCheckEvery = 16;
  // Files of replaced segments tracked at most, times max_files.
  static constexpr uint32_t kOtherSegmentsFactor = 2;

  // Creates the directory for `segment` (or takes over the one this user
  // made before, fixing its mode and group), then locks it for this writer.
  // A regular file there (the registry of layout 1) is replaced. Errors:
  // kBusy (another writer holds it), kPermission (made by another user),
  // kSystem.
  static Result<std::shared_ptr<ReaderRoster>> open(const std::string& segment,
                                                    mode_t registry_mode, gid_t group,
                                                    uint32_t max_files);
  ~ReaderRoster();
  ReaderRoster(const ReaderRoster&) = delete;
  ReaderRoster& operator=(const ReaderRoster&) = delete;

  // The segment that readers open under the table's name from now on (at
  // an attach, and when a replacement takes the name): entries kvsd cannot
  // tie to a segment count as its readers. The first call lists the
  // directory, and the segment is uncertain until that listing ends.
  void set_current(uint64_t incarnation);
  // Takes in what changed in the directory since (a bounded amount: see
  // above); TableWriter::reclaim calls it every round, so that a flood of
  // entries is worked off while the table is idle too.
  void tick() { refresh(); }
  // The smallest epoch announced by a reader of segment `incarnation`
  // (UINT64_MAX if none). A reader announcing an epoch <= `oldest_retired`
  // is checked for life when `check_dead`; a dead one is removed and does
  // not count. Call after the epoch increment and a full fence.
  uint64_t min_announced(uint64_t incarnation, uint64_t oldest_retired, bool check_dead);
  // The reader behind min_announced()'s answer (epoch 0 if none).
  const ReaderHolder& holder() const { return holder_; }
  // Nothing waits for readers any more: whatever a reader announces next
  // starts a new "since".
  void forget_holders();
  // Removes the tracked files of dead readers and starts a listing of the
  // directory (which finds entries not tracked: files of dead readers past
  // the limits, leftovers of readers that died while creating theirs) if
  // none runs. Returns the reader files removed.
  uint32_t sweep();
  ReaderCounts counts(uint64_t incarnation);
  // Slots inside a read in the live reader files of segment `incarnation`
  // (one replaced since, that such readers keep mapped); 1 when kvsd is
  // uncertain about it.
  uint32_t reading(uint64_t incarnation);
  // The directory holds entries kvsd has not taken in yet (inotify events
  // left unread or dropped, a first listing not finished): the current
  // segment is uncertain, and so would be any segment that replaced it.
  bool backlogged() const {
    const auto u = uncertain_.find(current_);
    return events_left_ || (u != uncertain_.end() && u->second.until_pass_after);
  }
  uint64_t dead_removed() const { return dead_removed_; }
  const std::string& dir() const { return dir_; }

 private:
  ReaderRoster() = default;
  struct File {
    int fd = -1;
    bool header_ok = false;  // ours, of this layout
    // The header's incarnation; for a file whose header does not check,
    // the current segment's when the roster met it.
    uint64_t incarnation = 0;
    // ThreadSanitizer builds only: the file mapped read-only, so that the
    // slots are read as atomics and TSan sees the readers' release stores
    // synchronise with the writer (it cannot see through pread).
    const uint8_t* map = nullptr;
    uint32_t slots_seen = 1;         // slots_handed_out at the last read: sizes the next
    int32_t pid = 0;                 // from the header, for people
    uint64_t min_seen = 0;           // the oldest epoch it announced at the last read
    uint64_t min_since_unix_ns = 0;  // when min_seen was first seen
    uint64_t listed_pass = 0;        // the last listing that met it
  };
  // A segment kvsd cannot vouch for: counted as read at epoch 1.
  struct Uncertain {
    uint64_t since_unix_ns = 0;
    uint64_t renewed_pass = 0;  // the last listing that found its cause again
    bool until_pass_after = false;
    uint64_t after_pass = 0;  // ... a listing numbered above this one ends
  };
  using Files = std::map<std::string, File>;

  void refresh();
  // Handles the running listing's entries until `until`; ends it at the
  // end of the directory.
  void continue_listing(std::chrono::steady_clock::time_point until);
  void start_listing();
  void end_listing();
  // Tracks entry `name` ("r.*"), met in a listing (pass > 0) or an event.
  void add(const std::string& name, uint64_t pass);
  void remove(Files::iterator it);
  void forget(Files::iterator it);  // closes, keeps the file
  void doubt(uint64_t incarnation);
  bool alive(const File& f) const;
  uint64_t file_min_epoch(File& f, uint8_t* buf) const;
  // Reads a file's header and the slots its owner handed out into buf;
  // returns how many slots were read, or -1 if the file is short (its owner
  // shrank it).
  int read_slots(File& f, uint8_t* buf) const;
  uint32_t& tracked(uint64_t incarnation) { return per_incarnation_[incarnation]; }
  uint32_t limit_for(uint64_t incarnation) const;

  std::string dir_;
  int dir_fd_ = -1;
  int inotify_fd_ = -1;  // -1: every refresh continues a listing
  uint32_t max_files_ = 0;
  uint64_t current_ = 0;  // the segment readers open now
  Files files_;           // "r.*" entries tracked with a descriptor
  std::map<uint64_t, uint32_t> per_incarnation_;
  uint32_t other_tracked_ = 0;  // files tracked of segments other than current_
  std::map<uint64_t, Uncertain> uncertain_;
  DIR* listing_ = nullptr;  // the listing under way, or null
  uint64_t pass_ = 0;       // the number of the last listing begun
  uint64_t passes_done_ = 0;
  bool events_left_ = false;  // the last refresh left inotify events in the queue
  uint64_t dead_removed_ = 0;
  ReaderHolder holder_;
};

}  // namespace kvs
