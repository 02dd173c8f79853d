// kvs_last_error() and kvs_strerror(): one per-thread message for the whole
// library (the read path, the write client, watches).
#include <string>

#include "kvs/kvs.h"
#include "src/reader_internal.hpp"

namespace {
thread_local std::string t_last_error;
}  // namespace

namespace kvs::detail {
int set_last_error(int code, std::string message) {
  t_last_error = std::move(message);
  return code;
}
}  // namespace kvs::detail

extern "C" {

const char* kvs_strerror(int code) {
  switch (code) {
    case KVS_OK:
      return "success";
    case KVS_ENOTFOUND:
      return "key not found";
    case KVS_ENOTABLE:
      return "table does not exist (is kvsd running?)";
    case KVS_ELAYOUT:
      return "table has another layout version";
    case KVS_ECORRUPT:
      return "table segment is corrupt";
    case KVS_EACCES:
      return "permission denied";
    case KVS_EINVAL:
      return "invalid argument";
    case KVS_ETIMEDOUT:
      return "timed out";
    case KVS_EREADERS:
      return "reader registry full";
    case KVS_ERANGE:
      return "buffer too small";
    case KVS_EFULL:
      return "table full";
    case KVS_ETOOBIG:
      return "key or value too large";
    case KVS_EBUSY:
      return "table held by another writer";
    case KVS_ESYS:
      return "system error";
    case KVS_ENOMEM:
      return "out of memory";
    case KVS_ENOTSUP:
      return "operation not supported";
    case KVS_EPROTO:
      return "protocol error";
    case KVS_EQUEUE:
      return "kvsd's producer queue is full";
    case KVS_ECONN:
      return "no connection to kvsd";
    case KVS_EKAFKA:
      return "Kafka refused the write";
    default:
      return "unknown error";
  }
}

const char* kvs_last_error(void) { return t_last_error.c_str(); }

}  // extern "C"
