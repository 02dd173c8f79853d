// kvsd.toml: every bad-config case names file, line and key.
#include "config/config.hpp"

#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <sstream>

namespace kvs::config {
namespace {

constexpr const char* kKafka = "[kafka]\n\"bootstrap.servers\" = \"127.0.0.1:9092\"\n";

constexpr const char* kMinimal = R"(
[kafka]
"bootstrap.servers" = "127.0.0.1:9092"

[[table]]
name = "flags"
topic = "flags-topic"
)";

Error parse_error(const std::string& text) {
  auto c = parse(text, "kvsd.toml");
  EXPECT_FALSE(c) << "expected an error for:\n" << text;
  return c ? Error{} : c.error();
}

TEST(ConfigTest, MinimalFileGetsTheDefaults) {
  auto c = parse(kMinimal, "kvsd.toml");
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(c->socket_path, "/run/kvs/kvsd.sock");
  EXPECT_EQ(c->socket_mode, 0660u);
  EXPECT_EQ(c->data_mode, 0640u);
  EXPECT_EQ(c->shm_prefix, "kvs.");
  ASSERT_EQ(c->tables.size(), 1u);
  EXPECT_EQ(c->tables[0].name, "flags");
  EXPECT_EQ(c->tables[0].topic, "flags-topic");
  EXPECT_EQ(c->tables[0].capacity, 1u << 20);
  EXPECT_EQ(c->tables[0].max_key_bytes, 4096u);
  ASSERT_EQ(c->kafka.size(), 1u);
  EXPECT_EQ(c->kafka[0].first, "bootstrap.servers");
}

TEST(ConfigTest, SnapshotKeysHaveDefaultsAndAreChecked) {
  auto c = parse(kMinimal, "kvsd.toml");
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(c->state_dir, "/var/lib/kvs");
  EXPECT_EQ(c->snapshot_interval_s, 600u);
  EXPECT_EQ(c->tables[0].seed_from, "");
  auto set = parse(std::string("[kvsd]\nstate_dir = \"/srv/kvs\"\nsnapshot_interval_s = 0\n") +
                       kMinimal + "seed_from = \"/tmp/x.snapshot\"\n",
                   "kvsd.toml");
  ASSERT_TRUE(set) << set.error().message;
  EXPECT_EQ(set->state_dir, "/srv/kvs");
  EXPECT_EQ(set->snapshot_interval_s, 0u);
  EXPECT_EQ(set->tables[0].seed_from, "/tmp/x.snapshot");
  const Error e = parse_error(std::string("[kvsd]\nstate_dir = \"\"\n") + kMinimal);
  EXPECT_NE(e.message.find("kvsd.state_dir = \"\""), std::string::npos) << e.message;
  EXPECT_NE(e.message.find("snapshot_interval_s = 0"), std::string::npos) << e.message;
}

TEST(ConfigTest, ChangeLogEntriesHaveADefaultAndMustHoldTheLongestKey) {
  auto c = parse(kMinimal, "kvsd.toml");
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(c->tables[0].change_log_entries, 65536u);
  auto off = parse(std::string(kMinimal) + "change_log_entries = 0\n", "kvsd.toml");
  ASSERT_TRUE(off) << off.error().message;
  EXPECT_EQ(off->tables[0].change_log_entries, 0u);
  // A 4096-byte key takes 74 entries: a log must hold 4 such changes.
  const Error e = parse_error(std::string(kMinimal) + "change_log_entries = 100\n");
  EXPECT_NE(e.message.find("change_log_entries = 100"), std::string::npos) << e.message;
  EXPECT_NE(e.message.find("at least 296"), std::string::npos) << e.message;
}

TEST(ConfigTest, ValuesAreRead) {
  auto c = parse(R"(
[kvsd]
socket_path = "/tmp/k.sock"
socket_mode = "0600"
data_mode = 0o644
allowed_uids = [0, 1000]
shm_prefix = "kvs2."
[kafka]
"bootstrap.servers" = "b:9092"
"socket.timeout.ms" = 5000
"enable.ssl.certificate.verification" = false
[[table]]
name = "a"
topic = "ta"
capacity = 4096
create_topic = true
[[table]]
name = "b"
topic = "tb"
)",
                 "kvsd.toml");
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(c->socket_path, "/tmp/k.sock");
  EXPECT_EQ(c->socket_mode, 0600u);
  EXPECT_EQ(c->data_mode, 0644u);
  EXPECT_EQ(c->allowed_uids, (std::vector<int64_t>{0, 1000}));
  EXPECT_EQ(c->shm_prefix, "kvs2.");
  ASSERT_EQ(c->kafka.size(), 3u);
  std::map<std::string, std::string> kafka(c->kafka.begin(), c->kafka.end());
  EXPECT_EQ(kafka["socket.timeout.ms"], "5000");
  EXPECT_EQ(kafka["enable.ssl.certificate.verification"], "false");
  ASSERT_EQ(c->tables.size(), 2u);
  EXPECT_EQ(c->tables[0].capacity, 4096u);
  EXPECT_TRUE(c->tables[0].create_topic);
  EXPECT_FALSE(c->tables[1].create_topic);
}

TEST(ConfigTest, UnknownKeySuggestsTheNearOne) {
  const Error e = parse_error(std::string(kMinimal) + "capacty = 5000\n");
  EXPECT_EQ(e.code, Errc::kInvalidArgument);
  EXPECT_NE(e.message.find("kvsd.toml:8:1: unknown key 'table[0].capacty'"), std::string::npos)
      << e.message;
  EXPECT_NE(e.message.find("did you mean 'capacity'?"), std::string::npos) << e.message;
}

TEST(ConfigTest, UnknownSectionSuggestsTheNearOne) {
  const Error e = parse_error(std::string(kMinimal) + "[kafak]\nx = 1\n");
  EXPECT_NE(e.message.find("unknown section 'kafak'; did you mean 'kafka'?"), std::string::npos)
      << e.message;
}

TEST(ConfigTest, FarOffKeyGetsNoSuggestion) {
  const Error e = parse_error("[kvsd]\nzzzzzzzzzz = 1\n" + std::string(kMinimal));
  EXPECT_NE(e.message.find("unknown key 'kvsd.zzzzzzzzzz'"), std::string::npos) << e.message;
  EXPECT_EQ(e.message.find("did you mean"), std::string::npos) << e.message;
}

TEST(ConfigTest, WrongTypeNamesKeyAndPosition) {
  const Error e = parse_error(std::string(kMinimal) + "capacity = \"big\"\n");
  EXPECT_NE(e.message.find("kvsd.toml:8:12: table[0].capacity must be an integer"),
            std::string::npos)
      << e.message;
}

TEST(ConfigTest, OutOfRangeNamesValueAndRange) {
  const Error e = parse_error(std::string(kMinimal) + "capacity = 0\n");
  EXPECT_NE(e.message.find("table[0].capacity = 0, must be 1024.."), std::string::npos)
      << e.message;
  const Error m = parse_error("[kvsd]\ndata_mode = \"0999\"\n" + std::string(kMinimal));
  EXPECT_NE(m.message.find("kvsd.data_mode = \"0999\" is not an octal mode"), std::string::npos)
      << m.message;
}

TEST(ConfigTest, MissingRequiredKey) {
  const Error e = parse_error("[[table]]\nname = \"x\"\n");
  EXPECT_NE(e.message.find("missing required key 'table[0].topic'"), std::string::npos)
      << e.message;
}

TEST(ConfigTest, SyntaxErrorNamesLine) {
  const Error e = parse_error("[kvsd]\nsocket_path = \"/x\n");
  EXPECT_NE(e.message.find("kvsd.toml:2:"), std::string::npos) << e.message;
}

TEST(ConfigTest, TableMustBeAnArrayOfTables) {
  const Error e = parse_error("[table]\nname = \"x\"\ntopic = \"y\"\n");
  EXPECT_NE(e.message.find("[[table]], not [table]"), std::string::npos) << e.message;
}

TEST(ConfigTest, CrossKeyChecks) {
  EXPECT_NE(parse_error("[kafka]\n").message.find("no [[table]]"), std::string::npos);
  EXPECT_NE(parse_error(std::string(kMinimal) + "[[table]]\nname = \"flags\"\ntopic = \"t2\"\n")
                .message.find("table 'flags' is declared twice"),
            std::string::npos);
  EXPECT_NE(
      parse_error(std::string(kMinimal) + "[[table]]\nname = \"b\"\ntopic = \"flags-topic\"\n")
          .message.find("already feeds another table"),
      std::string::npos);
  EXPECT_NE(parse_error(std::string(kKafka) + "[[table]]\nname = \"a/b\"\ntopic = \"t\"\n")
                .message.find("[A-Za-z0-9._-]"),
            std::string::npos);
  EXPECT_NE(parse_error("[kvsd]\nlog_level = \"loud\"\n" + std::string(kMinimal))
                .message.find("must be debug, info, warning or error"),
            std::string::npos);
  EXPECT_NE(parse_error("[kafka]\nlist = [1]\n" + std::string(kMinimal).substr(8))
                .message.find("kafka.list must be a string, integer or boolean"),
            std::string::npos);
}

TEST(ConfigTest, MetricsListenIsAnAddressOnLoopbackByDefault) {
  auto c = parse(kMinimal, "kvsd.toml");
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(c->metrics_listen, "127.0.0.1:9469");
  for (const char* good : {"", "0.0.0.0:9469", "[::1]:1", "192.0.2.7:65535"}) {
    auto g = parse("[kvsd]\nmetrics_listen = \"" + std::string(good) + "\"\n" + kMinimal, "k");
    ASSERT_TRUE(g) << good << ": " << g.error().message;
    EXPECT_EQ(g->metrics_listen, good);
  }
  const std::pair<const char*, const char*> bad[] = {
      {"9469", "write IPv4:port or [IPv6]:port"},
      {"localhost:9469", "has host \"localhost\": it must be an IPv4 address"},
      {"::1:9469", "has host \"::1\""},
      {"127.0.0.1:0", "has port \"0\": it must be 1..65535"},
      {"127.0.0.1:99999", "has port \"99999\""},
      {"127.0.0.1:http", "has port \"http\""},
      {"127.0.0.1:", "write IPv4:port"}};
  for (const auto& [value, why] : bad) {
    const Error e =
        parse_error("[kvsd]\nmetrics_listen = \"" + std::string(value) + "\"\n" + kMinimal);
    EXPECT_NE(e.message.find("kvsd.toml:2:18: kvsd.metrics_listen = \"" + std::string(value)),
              std::string::npos)
        << e.message;
    EXPECT_NE(e.message.find(why), std::string::npos) << e.message;
  }
}

TEST(ConfigTest, MissingFileNamesThePath) {
  auto c = load_file("/nonexistent/kvsd.toml");
  ASSERT_FALSE(c);
  EXPECT_NE(c.error().message.find("/nonexistent/kvsd.toml"), std::string::npos);
  EXPECT_NE(c.error().message.find("--config"), std::string::npos);
}

TEST(ConfigTest, ExampleFileIsGeneratedAndValid) {
  auto c = parse(example_toml(), "example");
  ASSERT_TRUE(c) << c.error().message;
  std::ifstream in(std::string(KVS_SOURCE_DIR) + "/etc/kvs/kvsd.toml");
  ASSERT_TRUE(in) << "etc/kvs/kvsd.toml is missing";
  std::stringstream ss;
  ss << in.rdbuf();
  EXPECT_EQ(ss.str(), example_toml())
      << "etc/kvs/kvsd.toml is out of date: regenerate it with kvsd --print-example-config";
  EXPECT_NE(describe_keys().find("memory_limit_bytes"), std::string::npos);
}

TEST(ConfigTest, EditDistance) {
  EXPECT_EQ(edit_distance("capacity", "capacty"), 1u);
  EXPECT_EQ(edit_distance("", "abc"), 3u);
  EXPECT_EQ(edit_distance("kafka", "kafak"), 2u);
}

TEST(ConfigTest, GroupsResolveByNameOrNumberAndAnUnknownOneIsNamed) {
  EXPECT_EQ(*resolve_group("", "socket_group"), static_cast<gid_t>(-1));
  EXPECT_EQ(*resolve_group("4242", "socket_group"), static_cast<gid_t>(4242));
  EXPECT_EQ(*resolve_group("root", "shm_group"), static_cast<gid_t>(0));
  auto bad = resolve_group("no-such-group-kvs", "shm_group");
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code, Errc::kInvalidArgument);
  EXPECT_EQ(bad.error().message,
            "kvsd.shm_group = \"no-such-group-kvs\": no such group; create it or use a number");
}

}  // namespace
}  // namespace kvs::config

namespace kvs::config {
namespace {

// Config that --check-config accepted but kvsd could not run: each is now
// refused at parse, naming file, line and key.
TEST(ConfigTest, GroupIdsOutOfRangeAreErrorsNotCrashes) {
  for (const char* g : {"99999999999999999999", "4294967297", "4294967295"}) {
    const Error e = parse_error("[kvsd]\nshm_group = \"" + std::string(g) + "\"\n" + kMinimal);
    EXPECT_EQ(e.message.rfind("kvsd.toml:2:13: kvsd.shm_group = \"", 0), 0u) << e.message;
    EXPECT_NE(e.message.find("not a group id (0..4294967294)"), std::string::npos) << e.message;
  }
  EXPECT_EQ(*resolve_group("4294967294", "shm_group"), static_cast<gid_t>(4294967294u));
}

TEST(ConfigTest, UnknownGroupIsCaughtByTheCheck) {
  const Error e =
      parse_error("[kvsd]\nsocket_group = \"no-such-group-kvs\"\n" + std::string(kMinimal));
  EXPECT_EQ(e.message.rfind("kvsd.toml:2:16: kvsd.socket_group = \"no-such-group-kvs\"", 0), 0u)
      << e.message;
  EXPECT_NE(e.message.find("no such group"), std::string::npos) << e.message;
}

TEST(ConfigTest, EmptyTopicIsRefused) {
  const Error e = parse_error("[[table]]\nname = \"a\"\ntopic = \"\"\n" + std::string(kKafka));
  EXPECT_EQ(e.message.rfind("kvsd.toml:3:9: table[0].topic = \"\"", 0), 0u) << e.message;
}

TEST(ConfigTest, ModesThatExposeATableAreRefused) {
  struct Case {
    const char* line;
    const char* says;
  } cases[] = {
      {"data_mode = \"0666\"", "kvsd.data_mode = \"0666\": lets others than kvsd write"},
      {"data_mode = \"0660\"", "kvsd.data_mode = \"0660\": lets others than kvsd write"},
      {"data_mode = \"0000\"", "kvsd.data_mode = \"0000\": kvsd needs to read and write"},
      {"registry_mode = \"0666\"", "kvsd.registry_mode = \"0666\": lets every local user"},
      {"socket_mode = \"0666\"", "kvsd.socket_mode = \"0666\": lets every local user"},
  };
  for (const auto& c : cases) {
    const Error e = parse_error("[kvsd]\n" + std::string(c.line) + "\n" + kMinimal);
    EXPECT_EQ(e.message.rfind("kvsd.toml:2:", 0), 0u) << e.message;
    EXPECT_NE(e.message.find(c.says), std::string::npos) << e.message;
  }
}

}  // namespace
}  // namespace kvs::config
