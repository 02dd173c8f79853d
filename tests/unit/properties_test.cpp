// [kafka] checked the way kvsd uses it (daemon/kafka/properties.hpp):
// librdkafka's own validation with file:line:key, and the overridden keys.
#include "kafka/properties.hpp"

#include <gtest/gtest.h>

namespace kvs::kafka {
namespace {

Result<std::vector<std::string>> check(const std::string& kafka_lines) {
  auto c = config::parse("[kafka]\n" + kafka_lines + "[[table]]\nname = \"a\"\ntopic = \"t\"\n",
                         "kvsd.toml");
  EXPECT_TRUE(c) << c.error().message;
  return check_properties(*c);
}

TEST(PropertiesTest, AnUnknownPropertyNamesFileLineAndKey) {
  auto r = check("\"bootstrap.servers\" = \"b:9092\"\n\"no.such.property\" = \"1\"\n");
  ASSERT_FALSE(r);
  EXPECT_EQ(
      r.error().message.rfind("kvsd.toml:3:22: kafka.no.such.property = \"1\": librdkafka: ", 0),
      0u)
      << r.error().message;
}

TEST(PropertiesTest, AnInvalidValueIsRefused) {
  auto r = check("\"bootstrap.servers\" = \"b:9092\"\n\"socket.timeout.ms\" = \"soon\"\n");
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("kafka.socket.timeout.ms"), std::string::npos)
      << r.error().message;
}

TEST(PropertiesTest, OverriddenPropertiesAreNamed) {
  auto r = check(
      "\"bootstrap.servers\" = \"b:9092\"\nacks = \"0\"\n\"enable.idempotence\" = false\n"
      "\"isolation.level\" = "
      "\"read_uncommitted\"\n\"request.required.acks\" = \"-1\"\n");
  ASSERT_TRUE(r) << r.error().message;
  ASSERT_EQ(r->size(), 3u);
  EXPECT_NE((*r)[0].find("kafka.acks = \"0\" is overridden: kvsd uses acks=all"), std::string::npos)
      << (*r)[0];
  EXPECT_NE((*r)[1].find("kafka.enable.idempotence = \"false\" is overridden"), std::string::npos)
      << (*r)[1];
  EXPECT_NE((*r)[2].find("isolation.level=read_committed"), std::string::npos) << (*r)[2];
}

}  // namespace
}  // namespace kvs::kafka
