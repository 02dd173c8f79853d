// Test helper: the reader files in a registry directory, read as kvsd reads
// them (by name and header), for tests that count what a process holds.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include "format/layout.hpp"

namespace kvs::test {

struct ReaderFileInfo {
  std::string path;
  int32_t pid = 0;
  uint32_t slots_handed_out = 0;
  uint64_t incarnation = 0;
};

// "r.*" files of `dir` whose header names `pid` (any pid if pid == 0).
inline std::vector<ReaderFileInfo> reader_files(const std::string& dir, pid_t pid = 0) {
  std::vector<ReaderFileInfo> out;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("r.", 0) != 0) continue;
    const int fd = ::open(e.path().c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    format::ReaderFileHeader h{};
    const bool ok = ::pread(fd, &h, sizeof h, 0) == static_cast<ssize_t>(sizeof h);
    ::close(fd);
    if (!ok || h.magic != format::kReaderFileMagic) continue;
    if (pid != 0 && h.pid != pid) continue;
    out.push_back({e.path().string(), h.pid, h.slots_handed_out, h.incarnation});
  }
  return out;
}

}  // namespace kvs::test
