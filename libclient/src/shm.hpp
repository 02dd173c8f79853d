// Shared-memory segments and process identity, for the reader and the writer.
#pragma once

#include <sys/types.h>

#include <boost/interprocess/mapped_region.hpp>
#include <boost/interprocess/shared_memory_object.hpp>
#include <cstdint>
#include <memory>
#include <string>

#include "kvs/result.hpp"

namespace kvs::shm {

// "kvs." + "users" -> "kvs.users"; checks the table name and the prefix.
Result<std::string> segment_name(const std::string& prefix, const std::string& table);
std::string path_of(const std::string& segment);  // "/dev/shm/<segment>"

// A named segment mapped into this process.
struct Mapping {
  boost::interprocess::shared_memory_object object;
  boost::interprocess::mapped_region region;
  std::string name;

  uint8_t* data() const { return static_cast<uint8_t*>(region.get_address()); }
  uint64_t size() const { return region.get_size(); }
  int fd() const { return object.get_mapping_handle().handle; }
};

enum class Access { kReadOnly, kReadWrite };

// Opens an existing segment. Errors: kNoTable (absent), kPermission, kSystem.
Result<std::unique_ptr<Mapping>> open_segment(const std::string& name, Access access);

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

}  // namespace kvs::shm
