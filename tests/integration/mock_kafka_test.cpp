// The test cluster is real Kafka to an independent client: kcat lists its
// topics, produces to it and consumes from it over TCP.
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <string>

#include "support/kafka_cluster.hpp"

namespace kvs {
namespace {

std::string run(const std::string& cmd) {
  std::string out;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) return out;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  ::pclose(p);
  return out;
}

TEST(MockKafkaTest, KcatProducesAndConsumesOverTcp) {
  test::KafkaCluster kafka;
  const std::string topic = test::KafkaCluster::unique_topic("kcat");
  if (kafka.is_mock()) {
    ASSERT_TRUE(kafka.create_topic(topic, 3));
  }
  const std::string b = kafka.bootstrap();
  const std::string meta = run("kcat -b " + b + " -L -t " + topic + " -m 10 2>&1");
  if (kafka.is_mock()) {
    EXPECT_NE(meta.find("3 partitions"), std::string::npos) << meta;
  }
  run("printf 'k1:v1\\nk2:v2\\n' | kcat -P -b " + b + " -t " + topic + " -K: -p 0 -m 10 2>&1");
  const std::string got =
      run("kcat -C -b " + b + " -t " + topic + " -p 0 -o beginning -e -K: -m 10 -c 2 2>&1");
  EXPECT_NE(got.find("k1:v1"), std::string::npos) << got;
  EXPECT_NE(got.find("k2:v2"), std::string::npos) << got;
}

TEST(MockKafkaTest, BrokerDownAndUpAreAcknowledged) {
  test::KafkaCluster kafka;
  if (!kafka.is_mock()) GTEST_SKIP() << "mock cluster only";
  EXPECT_FALSE(kafka.set_broker_down(99, true));
  EXPECT_TRUE(kafka.set_broker_down(1, true));
  EXPECT_TRUE(kafka.set_broker_down(1, false));
}

}  // namespace
}  // namespace kvs
