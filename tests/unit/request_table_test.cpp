// The client's table of requests in flight: every request comes back exactly
// once, whatever order the answers arrive in and however long one waits.
#include "protocol/request_table.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>

namespace kvs::protocol {
namespace {

TEST(RequestTableTest, TakesBackWhatWasInserted) {
  RequestTable<int> t;
  int v = 0;
  EXPECT_FALSE(t.take(1, &v));
  t.insert(1, 10);
  t.insert(2, 20);
  EXPECT_EQ(t.size(), 2u);
  EXPECT_FALSE(t.take(3, &v));
  ASSERT_TRUE(t.take(2, &v));
  EXPECT_EQ(v, 20);
  EXPECT_FALSE(t.take(2, &v)) << "an answer comes once";
  ASSERT_TRUE(t.take(1, &v));
  EXPECT_EQ(v, 10);
  EXPECT_EQ(t.size(), 0u);
}

TEST(RequestTableTest, IdZeroIsNeverARequest) {
  RequestTable<int> t;
  int v = 0;
  t.insert(64, 1);  // the slot of id 0 in the first ring
  EXPECT_FALSE(t.take(0, &v));
  EXPECT_EQ(t.size(), 1u);
}

// One request waits while a million later ones come and go: it is still
// there, and the ring stays the size of the window, not of the id spread.
TEST(RequestTableTest, ASlowRequestSurvivesManyFastOnes) {
  RequestTable<uint64_t> t;
  t.insert(1, 1);
  uint64_t v = 0;
  for (uint64_t id = 2; id < 1'000'000; ++id) {
    t.insert(id, id);
    if (id >= 2 + 16) {
      ASSERT_TRUE(t.take(id - 16, &v));  // 16 fast ones in flight
      ASSERT_EQ(v, id - 16);
    }
  }
  EXPECT_LE(t.slots(), 64u);
  ASSERT_TRUE(t.take(1, &v));
  EXPECT_EQ(v, 1u);
  EXPECT_EQ(t.size(), 16u);
}

// Random windows and answer orders against a std::map.
TEST(RequestTableTest, AgreesWithAMapUnderRandomOrder) {
  std::mt19937_64 rng(7);
  for (const size_t window : {1u, 5u, 63u, 64u, 65u, 300u, 5000u}) {
    RequestTable<uint64_t> t;
    std::map<uint64_t, uint64_t> want;
    uint64_t next = 1;
    for (int step = 0; step < 200'000; ++step) {
      if (want.size() < window && (want.empty() || rng() % 2)) {
        const uint64_t id = next++;
        next += rng() % 4 == 0 ? rng() % 100 : 0;  // ids a caller took and never sent
        t.insert(id, id * 3);
        want[id] = id * 3;
      } else {
        // Mostly the oldest answers first, sometimes any.
        auto it = want.begin();
        if (rng() % 3 == 0) std::advance(it, static_cast<long>(rng() % want.size()));
        uint64_t v = 0;
        ASSERT_TRUE(t.take(it->first, &v)) << "window " << window << " id " << it->first;
        ASSERT_EQ(v, it->second);
        want.erase(it);
      }
      ASSERT_EQ(t.size(), want.size());
    }
    std::vector<uint64_t> left = t.take_all();
    std::sort(left.begin(), left.end());
    std::vector<uint64_t> expected;
    for (const auto& [id, v] : want) expected.push_back(v);
    EXPECT_EQ(left, expected) << "window " << window;
    EXPECT_EQ(t.size(), 0u);
    EXPECT_LE(t.slots(), std::max<size_t>(RequestTable<uint64_t>::kInitialSlots, 4 * window))
        << "the ring follows the window";
  }
}

}  // namespace
}  // namespace kvs::protocol
