// What kvsctl's commands share: the table and socket a command works on,
// exit codes (sysexits.h) and error reporting, and the commands that live
// in files of their own (stats.cpp).
#pragma once

#include <string>
#include <string_view>

#include "kvs/kvs.h"

namespace kvs::config {
struct Config;
}  // namespace kvs::config

namespace kvs::kvsctl {

// sysexits.h
constexpr int kExitNotFound = 1;
constexpr int kExitUsage = 64;
constexpr int kExitData = 65;
constexpr int kExitUnavailable = 69;
constexpr int kExitSoftware = 70;
constexpr int kExitTempFail = 75;
constexpr int kExitNoPerm = 77;
constexpr int kExitConfig = 78;

// The exit code for a KVS_E* code.
int exit_code_of(int rc);
// Prints "kvsctl: what: <libkvs's last error>" and returns the exit code.
int fail(int rc, const std::string& what);

struct Target {
  std::string socket;
  std::string shm_prefix;
  std::string shm_dir;  // "": KVS_SHM_DIR, else /dev/shm
  std::string table;
  std::string topic;  // "" when not from a config
};

// JSON: each byte is one code point (bytes >= 0x80 as \u0080..\u00ff), so
// binary keys survive: decode the string and take each code point as a byte.
std::string json_escape(std::string_view s);
// Opens t.table; on error prints it and returns the exit code.
int open_table(const Target& t, kvs_table** out);
// True if kvsd answers on its socket.
bool kvsd_answers(const Target& t);

// kvsctl stats [--json] (stats.cpp).
int cmd_stats(const Target& t, bool json);
// kvsctl snapshot FILE (stats.cpp).
int cmd_snapshot(const Target& t, const std::string& out);
// kvsctl verify (verify.cpp): the table against its topic, read from Kafka
// up to the applied offsets with kvsd's [kafka] settings. 0 when equal, 65
// with a line per difference otherwise.
int cmd_verify(const Target& t, const config::Config& cfg, int timeout_ms);

}  // namespace kvs::kvsctl
