// What a config names on this host, checked by kvsd --check-config and
// before kvsd starts: the socket's directory, the segments' directory, the
// state directory with
// every directory and file under it, and each table's seed_from file.
// Snapshots decide what a table holds after a cold start, so kvsd trusts
// only files that it (or root) owns and that nobody else may write, reached
// without following a symbolic link below state_dir.
#pragma once

#include <sys/stat.h>

#include <string>

#include "config/config.hpp"
#include "kvs/result.hpp"

namespace kvs::config {

// "" if kvsd may trust the entry `st` describes: owned by root, by the user
// kvsd runs as or by the user `kvs`, and writable by nobody else (no group
// or other write bit); else why not, for a message.
std::string why_untrusted(const struct stat& st);

// Errors: kInvalidArgument with "file:line:col: key = "value": what is
// wrong; the way out".
Result<void> check_paths(const Config& c);

// The state directory of table `t`'s snapshots (see snapshots.hpp), checked
// as above; "" if it is fine or does not exist yet, else why not.
std::string why_untrusted_dir(const std::string& path);

}  // namespace kvs::config
