// The reader registry: the directory /dev/shm/<segment>.readers/ that kvsd
// owns, and this process's reader files in it (format/layout.hpp says what
// a file holds). This file owns creating, locking and removing a reader's
// own file; it never touches another process's file. kvsd's side, which
// reads every file, is writer/reader_roster.*.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>

#include "format/layout.hpp"
#include "kvs/result.hpp"

namespace kvs::registry {

// "/dev/shm/<segment>.readers"
std::string dir_path(const std::string& segment);

// The mode kvsd gives the registry directory for a configured registry_mode:
// sticky (a reader cannot remove another's file), owner rwx, and "wx" (create
// files, no listing) for the group and others where registry_mode lets them
// write. Without read permission nobody but kvsd can open (and so flock) the
// directory.
mode_t dir_mode(mode_t registry_mode);

// Checks that the registry directory of a data segment owned by `owner` was
// made by that owner as kvsd makes it (a directory, sticky, not writable by
// others unless sticky, same owner). Errors: kNoTable (absent), kPermission.
Result<void> check_dir(const std::string& dir, uid_t owner);

// Creates a reader file in `dir` for the process `pid` as ReaderFile::create
// describes, and returns its descriptor (read-write, holding the lock).
// kvsd makes them for readers it hands a table to over its socket
// (docs/protocol.md, OPEN): the reader holds the lock from then on. Errors
// as ReaderFile::create.
// `path` (if not null) receives its name.
Result<int> create_reader_file(const std::string& dir, uint64_t incarnation, int32_t pid,
                               std::string* path = nullptr);

// This process's file in a registry directory: created under a temporary
// name, sized, locked (OFD write lock, held until the file is closed or the
// process dies), mapped read-write, its header written, then renamed to its
// final name. Errors: kNoTable (no directory), kPermission, kNoMemory
// (/dev/shm full), kSystem (e.g. no file descriptor left).
class ReaderFile {
 public:
  static Result<std::unique_ptr<ReaderFile>> create(const std::string& dir, uint64_t incarnation);
  // A file kvsd made for this process (create_reader_file) and handed over:
  // mapped, never unlinked by this process (kvsd removes it once the lock
  // is gone). Owns fd, also when it fails. Errors: kSystem, kCorrupt (not
  // a reader file).
  static Result<std::unique_ptr<ReaderFile>> adopt(int fd, uint64_t incarnation);
  ~ReaderFile();  // unlinks the file (if it has a name here), unmaps and closes it (dropping the
                  // lock)
  ReaderFile(const ReaderFile&) = delete;
  ReaderFile& operator=(const ReaderFile&) = delete;

  format::ReaderSlot& slot(uint32_t i) const;
  // Hands out the next slot never used before; nullptr when all were.
  format::ReaderSlot* take_unused();
  // In a forked child: forgets the parent's file without unlinking it or
  // writing to it, and closes this process's copy of its descriptor so that
  // the parent's lock no longer depends on the child. Async-signal-safe.
  void abandon();

 private:
  ReaderFile() = default;
  int fd_ = -1;
  uint8_t* map_ = nullptr;
  std::string path_;
  uint32_t used_ = 0;
};

}  // namespace kvs::registry
