// Shared-memory segments and process identity, for the reader and the writer.
//
// A segment is named by a string: a bare name ("kvs.users") lives in
// /dev/shm; a name that starts with '/' is the path of a file in another
// directory (a tmpfs the deployment chose: `shm_dir`, KVS_SHM_DIR). Files
// beside a segment (its registry, a replacement being filled) are named by
// appending to its name, so they stay in its directory.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>

#include "kvs/result.hpp"

namespace kvs::shm {

// The directory of segments that have bare names.
inline constexpr const char* kDefaultDir = "/dev/shm";

// "kvs." + "users" -> "kvs.users"; checks the table name and the prefix.
Result<std::string> segment_name(const std::string& prefix, const std::string& table);
// The segment of `table` in directory `dir`: a bare name for "" and
// /dev/shm, else "<dir>/<prefix><table>". Errors: kInvalidArgument (a
// relative directory, or a name segment_name refuses).
Result<std::string> segment_in(const std::string& dir, const std::string& prefix,
                               const std::string& table);
std::string path_of(const std::string& segment);  // "/dev/shm/<segment>", or the path itself
std::string dir_of(const std::string& segment);   // "/dev/shm", or the path's directory

// A segment mapped into this process (unmapped and closed with it).
struct Mapping {
  Mapping() = default;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping();

  std::string name;

  uint8_t* data() const { return static_cast<uint8_t*>(addr_); }
  uint64_t size() const { return size_; }
  int fd() const { return fd_; }

  int fd_ = -1;
  void* addr_ = nullptr;
  uint64_t size_ = 0;
};

enum class Access { kReadOnly, kReadWrite };

// Opens an existing segment. Errors: kNoTable (absent), kPermission, kSystem.
Result<std::unique_ptr<Mapping>> open_segment(const std::string& name, Access access);
// Maps the segment open at `fd` read-only (one kvsd handed over), named
// `name` in messages; the mapping owns fd. Errors: kCorrupt, kNoMemory,
// kSystem.
Result<std::unique_ptr<Mapping>> adopt_segment(int fd, const std::string& name);

// Creates `name` with `bytes` zeroed bytes and mode `mode` (exactly, not
// masked by umask), owned by group `gid` unless gid == (gid_t)-1. Fails with
// kSystem if it exists.
Result<std::unique_ptr<Mapping>> create_segment(const std::string& name, uint64_t bytes,
                                                mode_t mode, gid_t gid);

// Atomically gives segment `from` the name `to`, replacing any segment there.
Result<void> rename_segment(const std::string& from, const std::string& to);
void remove_segment(const std::string& name);

// Checks a data segment before a reader trusts it: its owner must be one
// kvsd may run as (root, this process's user, the user "kvs", or the uid in
// the environment variable KVS_TRUSTED_UID), so that a segment another user
// planted in /dev/shm is refused; and nobody but the owner may write it.
// Sets *owner to the segment's owner. Errors: kPermission, kSystem.
Result<void> check_segment_owner(const Mapping& m, uid_t* owner);
// Whether a segment of owner `u` is trusted: root, this process's user, the
// user "kvs" or KVS_TRUSTED_UID.
bool trusted_owner(uid_t u);
// Whether kvsd's socket may be served by `u`: a trusted owner, or the
// overflow uid (a user namespace that does not map kvsd's uid: what is
// trusted then is the socket's path, which the deployment mounted).
bool trusted_peer(uid_t u);

}  // namespace kvs::shm
