// The sizes a table grows to, is resized to at a restart and is rebuilt
// with (daemon/growth.cpp): pure functions of its statistics and config.
#include <gtest/gtest.h>

#include "growth.hpp"

namespace kvs::daemon {
namespace {

WriterStats stats(uint64_t size, uint64_t capacity, uint64_t live, uint64_t arena) {
  WriterStats s;
  s.size = size;
  s.capacity = capacity;
  s.live_bytes = live;
  s.live_bytes_exact = true;
  s.arena_bytes = arena;
  s.segment_bytes = format::geometry(capacity, 256, arena, 0).segment_bytes;
  return s;
}

TEST(GrowthPlanTest, AFullIndexDoublesAndTheArenaKeepsItsSize) {
  auto s = plan_growth(stats(1024, 1024, 100 << 10, 1 << 20), 64, 0, 256, 0);
  ASSERT_TRUE(s);
  EXPECT_EQ(s->capacity, 2048u);
  EXPECT_EQ(s->arena_bytes, 1u << 20);
}

TEST(GrowthPlanTest, TheOtherDimensionDoublesTooWhenItIsOverHalfUsed) {
  auto s = plan_growth(stats(1024, 1024, 600 << 10, 1 << 20), 64, 0, 256, 0);
  ASSERT_TRUE(s);
  EXPECT_EQ(s->capacity, 2048u);
  EXPECT_EQ(s->arena_bytes, 2u << 20);
  auto a = plan_growth(stats(600, 1024, (1 << 20) - 100, 1 << 20), 4096, 0, 256, 0);
  ASSERT_TRUE(a);
  EXPECT_EQ(a->capacity, 2048u);
  EXPECT_EQ(a->arena_bytes, 2u << 20);
  // Where the limit has no room for both, the short one alone.
  const uint64_t limit = format::geometry(2048, 256, 1 << 20, 0).segment_bytes;
  auto one = plan_growth(stats(1024, 1024, 600 << 10, 1 << 20), 64, limit, 256, 0);
  ASSERT_TRUE(one);
  EXPECT_EQ(one->capacity, 2048u);
  EXPECT_EQ(one->arena_bytes, 1u << 20);
}

TEST(GrowthPlanTest, AFullArenaDoublesAndTheIndexKeepsItsSize) {
  auto s = plan_growth(stats(500, 1024, (1 << 20) - 100, 1 << 20), 4096, 0, 256, 0);
  ASSERT_TRUE(s);
  EXPECT_EQ(s->capacity, 1024u);
  EXPECT_EQ(s->arena_bytes, 2u << 20);
  // A record larger than the arena: room for the live entries and twice it.
  auto big = plan_growth(stats(500, 1024, (1 << 20) - 100, 1 << 20), 3 << 20, 0, 256, 0);
  ASSERT_TRUE(big);
  EXPECT_GE(big->arena_bytes, (1u << 20) - 100 + 2 * (3u << 20));
}

TEST(GrowthPlanTest, TheLimitShortensTheStepAndThenRefuses) {
  const uint64_t at = format::geometry(1024, 256, 1 << 20, 0).segment_bytes;
  // Room for an eighth more entries, not for twice as many.
  const uint64_t limit = format::geometry(1024 + 128, 256, 1 << 20, 0).segment_bytes;
  auto s = plan_growth(stats(1024, 1024, 1000, 1 << 20), 64, limit, 256, 0);
  ASSERT_TRUE(s);
  EXPECT_GT(s->capacity, 1024u);
  EXPECT_LE(format::geometry(s->capacity, 256, s->arena_bytes, 0).segment_bytes, limit);
  EXPECT_FALSE(plan_growth(stats(1024, 1024, 1000, 1 << 20), 64, at, 256, 0));
}

TEST(GrowthPlanTest, ABootstrapGrowsToItsProjectionAtOnceIfTheLimitAllows) {
  const WriterStats st = stats(1024, 1024, 150 << 10, 1 << 20);
  // 1024 of 1,000,000 records applied, each a key of its own.
  auto expected = bootstrap_projection(st, 1024, 1000000 - 1024);
  ASSERT_TRUE(expected);
  EXPECT_NEAR(static_cast<double>(expected->capacity), 1.1e6, 1e3);
  EXPECT_NEAR(static_cast<double>(expected->arena_bytes), 1.1 * 150 * 1024 * 1000000 / 1024.0, 1e5);
  auto s = plan_growth(st, 200, 0, 256, 0, expected);
  ASSERT_TRUE(s);
  EXPECT_EQ(s->capacity, expected->capacity);
  EXPECT_GE(s->arena_bytes, expected->arena_bytes);
  // Past the limit, plain growth.
  const uint64_t limit = format::geometry(4096, 256, 4 << 20, 0).segment_bytes;
  auto capped = plan_growth(st, 200, limit, 256, 0, expected);
  ASSERT_TRUE(capped);
  EXPECT_EQ(capped->capacity, 2048u);
  // Current, or nothing applied yet: no projection.
  EXPECT_FALSE(bootstrap_projection(st, 1024, 0));
  EXPECT_FALSE(bootstrap_projection(st, 0, 1000));
}

TEST(GrowthPlanTest, ARestartResizesOnlyWhatIsBelowTheConfigOrFarAboveTheData) {
  config::TableConfig cfg;
  cfg.capacity = 4096;
  cfg.memory_limit_bytes = 4 << 20;
  // As configured: kept.
  EXPECT_FALSE(plan_resize(stats(1000, 4096, 1 << 20, 4 << 20), cfg));
  // Grown, and still needed: kept.
  EXPECT_FALSE(plan_resize(stats(200000, 262144, 30 << 20, 64 << 20), cfg));
  // The config was raised: the index grows to it.
  auto up = plan_resize(stats(1000, 1024, 1 << 20, 4 << 20), cfg);
  ASSERT_TRUE(up);
  EXPECT_EQ(up->capacity, 4096u);
  EXPECT_EQ(up->arena_bytes, 4u << 20);
  // Once 1,000,000 entries, now 1,000: to twice the data, at least the config.
  auto down = plan_resize(stats(1000, 1 << 20, 200 << 10, 256 << 20), cfg);
  ASSERT_TRUE(down);
  EXPECT_EQ(down->capacity, 4096u);
  EXPECT_EQ(down->arena_bytes, 4u << 20);
  auto half = plan_resize(stats(100000, 262144, 20 << 20, 256 << 20), cfg);
  ASSERT_TRUE(half);
  EXPECT_EQ(half->capacity, 262144u) << "index within 4x of the data: kept";
  EXPECT_EQ(half->arena_bytes, 40u << 20);
  // Live bytes not known yet (the attach walk): nothing decided.
  WriterStats unknown = stats(1000, 1 << 20, 200 << 10, 256 << 20);
  unknown.live_bytes_exact = false;
  EXPECT_FALSE(plan_resize(unknown, cfg));
}

TEST(GrowthPlanTest, ARebuildStartsAtOneAndAHalfTimesTheDataOrTheConfig) {
  config::TableConfig cfg;
  cfg.capacity = 1024;
  cfg.memory_limit_bytes = 1 << 20;
  const TableSize big = rebuild_size(stats(100000, 1 << 20, 10 << 20, 64 << 20), cfg);
  EXPECT_EQ(big.capacity, 150000u);
  EXPECT_EQ(big.arena_bytes, 15u << 20);
  const TableSize small = rebuild_size(stats(10, 1 << 20, 1000, 64 << 20), cfg);
  EXPECT_EQ(small.capacity, 1024u);
  EXPECT_EQ(small.arena_bytes, 1u << 20);
}

// A table loaded from a snapshot of a million keys that has applied 1,000
// records of 2,000 still to come projects those records, not the million.
TEST(GrowthPlanTest, ASeededTableProjectsWhatCameAfterTheLoad) {
  const uint64_t seed = 1000000, seed_live = seed * 160;
  auto s = seeded_projection(stats(seed + 1000, seed + 2000, seed_live + 1000 * 160, 256 << 20),
                             seed, seed_live, 1000, 1000);
  ASSERT_TRUE(s);
  EXPECT_GE(s->capacity, seed + 2000);
  EXPECT_LE(s->capacity, seed + 2500) << "the loaded keys were projected as if applied";
  EXPECT_LE(s->arena_bytes, seed_live + 2500 * 160);
}

// A snapshot's table: 1.5 times what it loads, down to exactly that under
// max_memory_bytes, and never below the configured size.
TEST(GrowthPlanTest, ASeededTableIsSizedForItsSnapshotWithinTheLimit) {
  config::TableConfig cfg;
  cfg.capacity = 1024;
  cfg.memory_limit_bytes = 1 << 20;
  auto roomy = seed_size(100000, 16 << 20, cfg);
  ASSERT_TRUE(roomy);
  EXPECT_EQ(roomy->capacity, 150000u);
  EXPECT_GE(roomy->arena_bytes, 24u << 20);
  cfg.max_memory_bytes =
      format::geometry(110000, cfg.max_partitions, 18 << 20, cfg.change_log_entries).segment_bytes;
  auto tight = seed_size(100000, 16 << 20, cfg);
  ASSERT_TRUE(tight);
  EXPECT_GE(tight->capacity, 100000u);
  EXPECT_GE(tight->arena_bytes, 16u << 20);
  EXPECT_LE(format::geometry(tight->capacity, cfg.max_partitions, tight->arena_bytes,
                             cfg.change_log_entries)
                .segment_bytes,
            cfg.max_memory_bytes);
  auto small = seed_size(10, 1000, cfg);
  ASSERT_TRUE(small);
  EXPECT_EQ(small->capacity, 1024u);
  EXPECT_EQ(small->arena_bytes, 1u << 20);
  // More than max_memory_bytes holds even at exactly its size: not used.
  EXPECT_FALSE(seed_size(200000, 32 << 20, cfg));
}

}  // namespace
}  // namespace kvs::daemon
