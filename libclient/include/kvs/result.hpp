// Result<T>: the error type of kvs's internal C++ code.
//
// It has the shape of C++23's std::expected<T, Error> (which g++ 12 in C++20
// mode does not ship), so moving to std::expected later is a rename. Written by
// hand because it is ~80 lines and Debian 12 packages no maintained
// std::expected backport.
#pragma once

#include <cassert>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>

#include "kvs/kvs.h"

namespace kvs {

// One code per KVS_E* value of the C ABI; the numbers are the same.
enum class Errc : int {
  kOk = KVS_OK,
  kNotFound = KVS_ENOTFOUND,
  kNoTable = KVS_ENOTABLE,
  kLayoutMismatch = KVS_ELAYOUT,
  kCorrupt = KVS_ECORRUPT,
  kPermission = KVS_EACCES,
  kInvalidArgument = KVS_EINVAL,
  kTimeout = KVS_ETIMEDOUT,
  kRegistryFull = KVS_EREADERS,
  kBufferTooSmall = KVS_ERANGE,
  kTableFull = KVS_EFULL,
  kTooLarge = KVS_ETOOBIG,
  kBusy = KVS_EBUSY,
  kSystem = KVS_ESYS,
  kNoMemory = KVS_ENOMEM,
  kUnsupported = KVS_ENOTSUP,
  kProtocol = KVS_EPROTO,
  kQueueFull = KVS_EQUEUE,
  kConnection = KVS_ECONN,
  kKafka = KVS_EKAFKA,
};

struct Error {
  Errc code = Errc::kSystem;
  std::string message;  // names the thing, the value and the way out

  // Prefixes context on the way up: "opening table users: " + message.
  Error&& context(const std::string& what) && {
    message = what + ": " + message;
    return std::move(*this);
  }
};

struct Unexpected {
  Error error;
};

inline Unexpected make_error(Errc code, std::string message) {
  return Unexpected{Error{code, std::move(message)}};
}

template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::in_place_index<0>, std::move(value)) {}         // NOLINT
  Result(Unexpected e) : v_(std::in_place_index<1>, std::move(e.error)) {}  // NOLINT
  Result(Error e) : v_(std::in_place_index<1>, std::move(e)) {}             // NOLINT

  bool has_value() const { return v_.index() == 0; }
  explicit operator bool() const { return has_value(); }
  T& value() & {
    assert(has_value());
    return std::get<0>(v_);
  }
  T&& value() && {
    assert(has_value());
    return std::get<0>(std::move(v_));
  }
  const T& value() const& {
    assert(has_value());
    return std::get<0>(v_);
  }
  T& operator*() & { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  const Error& error() const& {
    assert(!has_value());
    return std::get<1>(v_);
  }
  Error&& error() && {
    assert(!has_value());
    return std::get<1>(std::move(v_));
  }

 private:
  std::variant<T, Error> v_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Unexpected e) : err_(std::move(e.error)), ok_(false) {}  // NOLINT
  Result(Error e) : err_(std::move(e)), ok_(false) {}             // NOLINT

  bool has_value() const { return ok_; }
  explicit operator bool() const { return ok_; }
  void value() const { assert(ok_); }
  const Error& error() const& {
    assert(!ok_);
    return err_;
  }
  Error&& error() && {
    assert(!ok_);
    return std::move(err_);
  }

 private:
  Error err_;
  bool ok_ = true;
};

}  // namespace kvs
