// kvsd's view of a table's reader registry: the directory it owns (and locks:
// the writer's lock) and every reader file in it. Internal to the writer.
//
// Everything in the directory is untrusted input: readers write their own
// files, and any process in the readers' group can create entries. So the
// roster only reads (pread, never a mapping another process could shrink),
// never writes a reader's file, treats what it cannot read or check as a
// live reader announcing epoch 1 (which only holds reuse back), removes files
// only when no process holds their lock, and bounds how many files it opens.
//
// Discovery is ordered with the epoch protocol: the writer increments the
// epoch and fences before min_announced(), which first drains inotify. A
// file renamed into place after that drain belongs to a reader whose first
// announcement follows the increment, so it cannot see what was retired
// before (docs/format.md).
#pragma once

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
  // Lists the directory again and removes the files of dead readers and
  // leftovers of readers that died while creating theirs. Returns the
  // reader files removed.
  uint32_t sweep();
  ReaderCounts counts(uint64_t incarnation);
  uint64_t dead_removed() const { return dead_removed_; }
  const std::string& dir() const { return dir_; }

 private:
  ReaderRoster() = default;
  struct File {
    int fd = -1;
    bool header_ok = false;  // ours, of this layout
    uint64_t incarnation = 0;
    // ThreadSanitizer builds only: the file mapped read-only, so that the
    // slots are read as atomics and TSan sees the readers' release stores
    // synchronise with the writer (it cannot see through pread).
    const uint8_t* map = nullptr;
    uint32_t slots_seen = 1;         // slots_handed_out at the last read: sizes the next
    int32_t pid = 0;                 // from the header, for people
    uint64_t min_seen = 0;           // the oldest epoch it announced at the last read
    uint64_t min_since_unix_ns = 0;  // when min_seen was first seen
  };
  void refresh();
  void relist();
  void add(const std::string& name);
  void remove(std::map<std::string, File>::iterator it);
  void forget(std::map<std::string, File>::iterator it);  // closes, keeps the file
  bool alive(const File& f) const;
  uint64_t file_min_epoch(File& f, uint8_t* buf) const;
  // Reads a file's header and the slots its owner handed out into buf;
  // returns how many slots were read, or -1 if the file is short (its owner
  // shrank it).
  int read_slots(File& f, uint8_t* buf) const;

  std::string dir_;
  int dir_fd_ = -1;
  int inotify_fd_ = -1;  // -1: relist at every refresh
  uint32_t max_files_ = 0;
  std::map<std::string, File> files_;  // "r.*" entries
  bool incomplete_ = false;            // an entry could not be opened: assume it reads
  uint64_t dead_removed_ = 0;
  ReaderHolder holder_;
  uint64_t incomplete_since_unix_ns_ = 0;  // while an entry cannot be opened
};

}  // namespace kvs
