// Which sanitizer a translation unit is built with, for GCC and Clang alike:
// KVS_ASAN and KVS_TSAN are defined to 1 when AddressSanitizer or
// ThreadSanitizer instruments it.
#pragma once

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KVS_ASAN 1
#endif
#if __has_feature(thread_sanitizer)
#define KVS_TSAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) && !defined(KVS_ASAN)
#define KVS_ASAN 1
#endif
#if defined(__SANITIZE_THREAD__) && !defined(KVS_TSAN)
#define KVS_TSAN 1
#endif
