// kvsctl's shared helpers (kvsctl.hpp).
#include <cstdio>
#include <string>

#include "kvsctl.hpp"

namespace kvs::kvsctl {

int exit_code_of(int rc) {
  switch (rc) {
    case KVS_OK:
      return 0;
    case KVS_ENOTFOUND:
      return kExitNotFound;
    case KVS_EINVAL:
    case KVS_ETOOBIG:
    case KVS_ERANGE:
      return kExitData;
    case KVS_ENOTABLE:
    case KVS_ECONN:
      return kExitUnavailable;
    case KVS_ETIMEDOUT:
    case KVS_EQUEUE:
    case KVS_EREADERS:
    case KVS_EBUSY:
      return kExitTempFail;
    case KVS_EACCES:
      return kExitNoPerm;
    default:
      return kExitSoftware;
  }
}

int fail(int rc, const std::string& what) {
  std::fprintf(stderr, "kvsctl: %s: %s\n", what.c_str(),
               *kvs_last_error() ? kvs_last_error() : kvs_strerror(rc));
  return exit_code_of(rc);
}

std::string json_escape(std::string_view s) {
  std::string o = "\"";
  for (unsigned char c : s) {
    if (c == '"') {
      o += "\\\"";
    } else if (c == '\\') {
      o += "\\\\";
    } else if (c < 0x20 || c >= 0x7f) {
      char b[7];
      std::snprintf(b, sizeof b, "\\u%04x", c);
      o += b;
    } else {
      o += static_cast<char>(c);
    }
  }
  return o + "\"";
}

int open_table(const Target& t, kvs_table** out) {
  kvs_open_options o{t.shm_prefix.c_str(), t.shm_dir.empty() ? nullptr : t.shm_dir.c_str(),
                     t.socket.empty() ? nullptr : t.socket.c_str(), KVS_HANDOVER_AUTO};
  const int rc = kvs_open(t.table.c_str(), &o, out);
  if (rc != KVS_OK) return fail(rc, "opening table " + t.table);
  return KVS_OK;
}

bool kvsd_answers(const Target& t) {
  kvs_client* c = nullptr;
  if (kvs_connect(t.socket.c_str(), &c) != KVS_OK) return false;
  kvs_disconnect(c);
  return true;
}

}  // namespace kvs::kvsctl
