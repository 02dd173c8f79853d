// Shared (not private) futex calls on a word in a table segment: kvsd wakes,
// readers in other processes (and pid namespaces) sleep. FUTEX_WAIT needs
// only read access, so readers sleep on their read-only mapping.
#pragma once

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <climits>
#include <cstdint>

namespace kvs::futex {

// Sleeps while `word` holds `expected`, at most `timeout`; returns early on a
// wake, a signal, or if the word already differs.
inline void wait(const std::atomic<uint32_t>* word, uint32_t expected,
                 std::chrono::nanoseconds timeout) {
  if (timeout.count() <= 0) return;
  struct timespec ts {};
  ts.tv_sec = static_cast<time_t>(timeout.count() / 1000000000);
  ts.tv_nsec = static_cast<long>(timeout.count() % 1000000000);
  ::syscall(SYS_futex, reinterpret_cast<const uint32_t*>(word), FUTEX_WAIT, expected, &ts, nullptr,
            0);
}

// Wakes every process sleeping on `word`.
inline void wake_all(std::atomic<uint32_t>* word) {
  ::syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
}

}  // namespace kvs::futex
