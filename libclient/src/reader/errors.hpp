// How the read path reports an error: the code it returns, and the message
// kvs_last_error() gives this thread (errors.cpp).
#pragma once

#include <string>

#include "kvs/result.hpp"
#include "src/reader_internal.hpp"

namespace kvs::reader {

inline int fail(const Error& e) {
  return detail::set_last_error(static_cast<int>(e.code), e.message);
}

inline int fail(Errc code, std::string message) {
  return detail::set_last_error(static_cast<int>(code), std::move(message));
}

}  // namespace kvs::reader
