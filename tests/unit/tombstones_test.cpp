// Tombstones (daemon/tombstones.hpp): which tombstone of a key is kept,
// what it wins over, and the bound.
#include "tombstones.hpp"

#include <gtest/gtest.h>

namespace kvs::daemon {
namespace {

KeyId K(uint64_t n) { return KeyId{n, 0}; }

TEST(TombstonesTest, KeepsTheWinningTombstoneAndWinsOverOlderRecordsOfOtherPartitions) {
  Tombstones t;
  EXPECT_FALSE(t.wins_over(K(7), {100, 0}));
  t.remember(K(7), {200, 1});
  EXPECT_TRUE(t.wins_over(K(7), {100, 0}));   // older, another partition
  EXPECT_FALSE(t.wins_over(K(7), {300, 0}));  // later
  EXPECT_FALSE(t.wins_over(K(7), {100, 1}));  // the same partition's later offset
  EXPECT_TRUE(t.wins_over(K(7), {200, 0}));   // equal time: the higher partition
  t.remember(K(7), {150, 2});                 // loses to the one kept
  EXPECT_TRUE(t.wins_over(K(7), {180, 0}));
  t.remember(K(7), {250, 2});
  EXPECT_TRUE(t.wins_over(K(7), {220, 0}));
  t.forget(K(7));
  EXPECT_FALSE(t.wins_over(K(7), {1, 0}));
  EXPECT_EQ(t.size(), 0u);
}

TEST(TombstonesTest, ForgetsTheOldestBeyondItsLimit) {
  Tombstones t(100);
  for (uint64_t k = 0; k < 250; ++k) t.remember(K(k), {1000, 1});
  EXPECT_EQ(t.size(), 100u);
  EXPECT_EQ(t.forgotten(), 150u);
  EXPECT_FALSE(t.wins_over(K(0), {1, 0}));
  EXPECT_TRUE(t.wins_over(K(249), {1, 0}));
  // Remembering a key again and forgetting keys never grows the queue
  // without bound.
  for (int round = 0; round < 1000; ++round) {
    t.remember(K(5000), {1000 + round, 1});
    t.forget(K(6000 + round));
  }
  EXPECT_LE(t.size(), 100u);
  EXPECT_TRUE(t.wins_over(K(5000), {1500, 0}));
}

// Keys are told apart by 128 bits: two keys whose 64-bit hashes collide
// (a producer can find such a pair with about 2^32 work) are two keys.
TEST(TombstonesTest, KeysThatShareSixtyFourBitsAreDistinct) {
  Tombstones t;
  t.remember(KeyId{42, 1}, {200, 1});
  EXPECT_TRUE(t.wins_over(KeyId{42, 1}, {100, 0}));
  EXPECT_FALSE(t.wins_over(KeyId{42, 2}, {100, 0})) << "another key's tombstone won";
  EXPECT_NE(key_id("a"), key_id("b"));
  EXPECT_EQ(key_id("a"), key_id(std::string("a")));
}

}  // namespace
}  // namespace kvs::daemon
