// kvsd's start-up wait for a topic (daemon/kafka/topic_wait.hpp): a cluster
// that does not answer and a topic it calls unknown are retried up to the
// bound; a topic is created only once it stayed unknown for the grace.
#include "kafka/topic_wait.hpp"

#include <gtest/gtest.h>

namespace kvs::kafka {
namespace {

using namespace std::chrono_literals;
using Next = TopicWait::Next;

const Result<int32_t> kUnknown = make_error(Errc::kNotFound, "topic 't' does not exist");
const Result<int32_t> kSilent =
    make_error(Errc::kTimeout, "metadata: Local: Broker transport failure");

// A broker that has just started calls the topic unknown for about a
// second: kvsd waits instead of exiting.
TEST(TopicWaitTest, UnknownTopicOfAStartingBrokerIsWaitedFor) {
  const auto t0 = TopicWait::Clock::now();
  TopicWait w(60s, /*may_create=*/false, t0);
  EXPECT_EQ(w.after(kUnknown, t0), Next::kRetry);
  EXPECT_EQ(w.after(kUnknown, t0 + 900ms), Next::kRetry);
  EXPECT_EQ(w.after(Result<int32_t>(4), t0 + 1100ms), Next::kUse);
}

TEST(TopicWaitTest, GivesUpAtTheBound) {
  const auto t0 = TopicWait::Clock::now();
  TopicWait w(5s, false, t0);
  EXPECT_EQ(w.after(kSilent, t0 + 4s), Next::kRetry);
  EXPECT_EQ(w.after(kSilent, t0 + 5s), Next::kGiveUp);
  TopicWait u(5s, false, t0);
  EXPECT_EQ(u.after(kUnknown, t0 + 4900ms), Next::kRetry);
  EXPECT_EQ(u.after(kUnknown, t0 + 5s), Next::kGiveUp);
}

// create_topic: only after the topic stayed unknown for the grace, once;
// answers of a silent cluster in between start the grace over.
TEST(TopicWaitTest, CreatesOnlyATopicThatStaysUnknown) {
  const auto t0 = TopicWait::Clock::now();
  TopicWait w(60s, /*may_create=*/true, t0, 3s);
  EXPECT_EQ(w.after(kUnknown, t0), Next::kRetry);
  EXPECT_EQ(w.after(kUnknown, t0 + 2s), Next::kRetry);
  EXPECT_EQ(w.after(kSilent, t0 + 2500ms), Next::kRetry);
  EXPECT_EQ(w.after(kUnknown, t0 + 3500ms), Next::kRetry) << "the grace starts over";
  EXPECT_EQ(w.after(kUnknown, t0 + 6500ms), Next::kCreate);
  EXPECT_TRUE(w.created());
  EXPECT_EQ(w.after(kUnknown, t0 + 7s), Next::kRetry) << "created once";
  EXPECT_EQ(w.after(Result<int32_t>(3), t0 + 7500ms), Next::kUse);
}

TEST(TopicWaitTest, BackoffDoublesToTwoSeconds) {
  TopicWait w(60s, false, TopicWait::Clock::now());
  const std::chrono::milliseconds want[] = {100ms, 200ms, 400ms, 800ms, 1600ms, 2000ms, 2000ms};
  for (auto d : want) EXPECT_EQ(w.backoff(), d);
}

}  // namespace
}  // namespace kvs::kafka
