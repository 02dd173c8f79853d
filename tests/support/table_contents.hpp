// A table's whole contents, for tests that compare tables.
#pragma once

#include <gtest/gtest.h>

#include <map>
#include <string>
#include <string_view>

#include "kvs/kvs.hpp"

namespace kvs::test {

// Every key and value of the table, read in one guard.
inline std::map<std::string, std::string> contents(const Table& t) {
  std::map<std::string, std::string> m;
  auto g = t.read();
  EXPECT_TRUE(g);
  EXPECT_TRUE(g->for_each([&](std::string_view k, std::string_view v) {
    m.emplace(std::string(k), std::string(v));
    return true;
  }));
  return m;
}

}  // namespace kvs::test
