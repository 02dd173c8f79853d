// Tombstones (daemon/tombstones.hpp): which tombstone of a key is kept,
// what it wins over, and the bound.
#include "tombstones.hpp"

#include <gtest/gtest.h>

namespace kvs::daemon {
namespace {

TEST(TombstonesTest, KeepsTheWinningTombstoneAndWinsOverOlderRecordsOfOtherPartitions) {
  Tombstones t;
  EXPECT_FALSE(t.wins_over(7, {100, 0}));
  t.remember(7, {200, 1});
  EXPECT_TRUE(t.wins_over(7, {100, 0}));   // older, another partition
  EXPECT_FALSE(t.wins_over(7, {300, 0}));  // later
  EXPECT_FALSE(t.wins_over(7, {100, 1}));  // the same partition's later offset
  EXPECT_TRUE(t.wins_over(7, {200, 0}));   // equal time: the higher partition
  t.remember(7, {150, 2});                 // loses to the one kept
  EXPECT_TRUE(t.wins_over(7, {180, 0}));
  t.remember(7, {250, 2});
  EXPECT_TRUE(t.wins_over(7, {220, 0}));
  t.forget(7);
  EXPECT_FALSE(t.wins_over(7, {1, 0}));
  EXPECT_EQ(t.size(), 0u);
}

TEST(TombstonesTest, ForgetsTheOldestBeyondItsLimit) {
  Tombstones t(100);
  for (uint64_t k = 0; k < 250; ++k) t.remember(k, {1000, 1});
  EXPECT_EQ(t.size(), 100u);
  EXPECT_EQ(t.forgotten(), 150u);
  EXPECT_FALSE(t.wins_over(0, {1, 0}));
  EXPECT_TRUE(t.wins_over(249, {1, 0}));
  // Remembering a key again and forgetting keys never grows the queue
  // without bound.
  for (int round = 0; round < 1000; ++round) {
    t.remember(5000, {1000 + round, 1});
    t.forget(6000 + round);
  }
  EXPECT_LE(t.size(), 100u);
  EXPECT_TRUE(t.wins_over(5000, {1500, 0}));
}

}  // namespace
}  // namespace kvs::daemon
