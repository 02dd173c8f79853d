// Gives memory that kvsd freed back to the system, with whichever allocator
// kvsd is linked with (tcmalloc in release builds, see CMakeLists.txt;
// glibc's under the sanitizers): both keep freed memory for reuse, so
// buffers that slow clients held would otherwise stay resident.
#pragma once

#ifdef KVS_TCMALLOC
#include <gperftools/malloc_extension_c.h>
#else
#include <malloc.h>
#endif

namespace kvs::daemon {

inline void give_back_free_memory() {
#ifdef KVS_TCMALLOC
  MallocExtension_ReleaseFreeMemory();
#else
  ::malloc_trim(0);
#endif
}

}  // namespace kvs::daemon
