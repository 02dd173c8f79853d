// Which sanitizer a translation unit is built with, for GCC and Clang alike:
// KVS_ASAN and KVS_TSAN are defined to 1 when AddressSanitizer or
// ThreadSanitizer instruments it. KVS_POISON and KVS_UNPOISON mark memory
// that no one may touch (free arena blocks) for AddressSanitizer.
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

#ifdef KVS_ASAN
#include <sanitizer/asan_interface.h>
#define KVS_POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define KVS_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define KVS_POISON(p, n) ((void)(p), (void)(n))
#define KVS_UNPOISON(p, n) ((void)(p), (void)(n))
#endif
