// Opening a table's writer in tests.
#pragma once

#include <gtest/gtest.h>

#include <memory>

#include "writer/table_writer.hpp"

namespace kvs::test {

// The writer of o's table; null (after a failed expectation naming the
// error) if it cannot be opened.
inline std::unique_ptr<TableWriter> open_writer(const WriterOptions& o) {
  auto w = TableWriter::open(o);
  EXPECT_TRUE(w) << (w ? "" : w.error().message);
  return w ? std::move(*w) : nullptr;
}

}  // namespace kvs::test
