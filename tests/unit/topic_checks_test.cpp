// What kvsd warns about in a topic's configuration (daemon/kafka/topic_checks.hpp).
#include "kafka/topic_checks.hpp"

#include <gtest/gtest.h>

namespace kvs::kafka {
namespace {

TEST(TopicChecksTest, ACompactedDurableTopicGetsNoWarning) {
  EXPECT_TRUE(topic_warnings("t", {{"cleanup.policy", "compact"},
                                   {"min.insync.replicas", "2"},
                                   {"unclean.leader.election.enable", "false"}})
                  .empty());
  EXPECT_TRUE(topic_warnings("t", {{"cleanup.policy", "compact,delete"}}).empty());
  EXPECT_TRUE(topic_warnings("t", {}).empty()) << "what the cluster did not describe is not judged";
}

TEST(TopicChecksTest, EachSettingThatBreaksAPromiseIsNamed) {
  const auto w = topic_warnings("t", {{"cleanup.policy", "delete"},
                                      {"min.insync.replicas", "1"},
                                      {"unclean.leader.election.enable", "true"}});
  ASSERT_EQ(w.size(), 3u);
  EXPECT_NE(w[0].find("topic t has cleanup.policy=delete"), std::string::npos) << w[0];
  EXPECT_NE(w[1].find("topic t has min.insync.replicas=1"), std::string::npos) << w[1];
  EXPECT_NE(w[1].find("set min.insync.replicas=2"), std::string::npos) << w[1];
  EXPECT_NE(w[2].find("unclean.leader.election.enable=true"), std::string::npos) << w[2];
}

// A broker refuses a record batch over the topic's max.message.bytes (the
// default 1000012 of many brokers): a table that allows larger records
// gets a warning at start; kvsd's defaults fit under it.
TEST(TopicChecksTest, ATopicThatRefusesRecordsATableAllowsIsNamed) {
  const std::map<std::string, std::string> cfg{{"max.message.bytes", "1000012"}};
  const auto w = topic_warnings("t", cfg, 4096, 1048576);
  ASSERT_EQ(w.size(), 1u);
  EXPECT_NE(w[0].find("topic t has max.message.bytes=1000012"), std::string::npos) << w[0];
  EXPECT_NE(w[0].find("max_value_bytes <= 995788"), std::string::npos) << w[0];
  EXPECT_TRUE(topic_warnings("t", cfg, 4096, 983040).empty()) << "kvsd's defaults";
  EXPECT_TRUE(topic_warnings("t", cfg).empty()) << "no table limits: not judged";
}

}  // namespace
}  // namespace kvs::kafka
