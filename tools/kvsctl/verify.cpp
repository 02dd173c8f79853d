// kvsctl verify: a table against its topic. Reads the topic straight from
// Kafka up to the offsets the table has applied, keeps for each key the last
// record of each partition (what compaction keeps), picks the winner across
// partitions by the rule of docs/format.md, "Keys in two partitions"
// (format::replaces: the later Kafka timestamp, then the higher partition),
// and compares the result with the table: keys missing, extra or different;
// and the digest kvsd keeps with the one its contents hash to.
#include <librdkafka/rdkafka.h>

#include <chrono>
#include <cstdio>
#include <map>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "config/config.hpp"
#include "format/layout.hpp"
#include "kafka/consumer.hpp"
#include "kvs/kvs.h"
#include "kvsctl.hpp"

namespace kvs::kvsctl {

namespace {

using clock = std::chrono::steady_clock;

// The table at one set of applied offsets: its next offset per partition
// and its contents.
struct TableView {
  std::vector<int64_t> next;
  std::map<std::string, std::string> contents;
  std::optional<kvs_digest> digest;  // kvsd's, read at the same offsets
};

// The contents' digest as kvsd keeps it (format::entry_digest), counted
// from what was read: it differs if the segment changed behind kvsd's back.
uint64_t contents_digest(const std::map<std::string, std::string>& contents) {
  uint64_t sum = 0;
  std::string kv;
  for (const auto& [key, value] : contents) {
    kv.assign(key).append(value);
    sum += format::entry_digest(kv.data(), static_cast<uint32_t>(key.size()),
                                static_cast<uint32_t>(value.size()));
  }
  return sum;
}

std::vector<int64_t> applied_offsets(kvs_table* tb) {
  std::vector<int64_t> next(kvs_partition_count(tb), 0);
  for (uint32_t p = 0; p < next.size(); ++p) {
    int64_t hw = 0;
    (void)kvs_partition_offsets(tb, p, &next[p], &hw);
  }
  return next;
}

int collect(void* ctx, const void* key, size_t key_len, const void* value, size_t value_len) {
  auto* out = static_cast<std::map<std::string, std::string>*>(ctx);
  out->emplace(std::string(static_cast<const char*>(key), key_len),
               std::string(static_cast<const char*>(value), value_len));
  return 0;
}

// The contents and the offsets they reflect: read again until the offsets
// did not move during the walk (kvsd may be applying records).
Result<TableView> read_table(kvs_table* tb) {
  for (int attempt = 0; attempt < 20; ++attempt) {
    TableView v;
    kvs_digest before{};
    const bool digest_read = kvs_table_digest(tb, &before) == KVS_OK;
    v.next = applied_offsets(tb);
    kvs_txn* x = nullptr;
    if (int rc = kvs_read_begin(tb, &x); rc != KVS_OK) {
      return make_error(static_cast<Errc>(rc), kvs_last_error());
    }
    const int rc = kvs_for_each(x, collect, &v.contents);
    kvs_read_end(x);
    if (rc != KVS_OK) return make_error(static_cast<Errc>(rc), kvs_last_error());
    if (applied_offsets(tb) != v.next) continue;
    kvs_digest after{};
    if (digest_read && kvs_table_digest(tb, &after) == KVS_OK && after.digest == before.digest &&
        after.partitions == v.next.size()) {
      v.digest = after;
    }
    return v;
  }
  return make_error(Errc::kTimeout,
                    "the table kept changing while it was read (20 tries); verify it while "
                    "nobody writes to the topic");
}

// The last record of a key in one partition.
struct Last {
  int64_t offset = -1;
  int64_t timestamp_ms = 0;
  bool tombstone = false;
  std::string value;
};
using TopicKeys = std::unordered_map<std::string, std::map<int32_t, Last>>;

// Applies one fetched record or event of partition p; false when the
// partition has reached `next` (the table's position).
Result<bool> take(const rd_kafka_message_t* m, int64_t next, TopicKeys* keys, uint64_t* records) {
  if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
    if (m->offset >= next) return false;
    return make_error(Errc::kKafka, "partition " + std::to_string(m->partition) +
                                        " of the topic ends at offset " +
                                        std::to_string(m->offset) + ", below the table's " +
                                        std::to_string(next) + ": was the topic re-created?");
  }
  if (m->err) {
    return make_error(Errc::kKafka, "partition " + std::to_string(m->partition) + ": " +
                                        rd_kafka_message_errstr(m));
  }
  if (m->offset >= next) return false;
  ++*records;
  Last& l = (*keys)[std::string(static_cast<const char*>(m->key), m->key_len)][m->partition];
  l.offset = m->offset;
  const int64_t ts = rd_kafka_message_timestamp(m, nullptr);
  l.timestamp_ms = ts > 0 ? ts : 0;
  l.tombstone = m->payload == nullptr;
  l.value.assign(l.tombstone ? "" : static_cast<const char*>(m->payload), l.tombstone ? 0 : m->len);
  return m->offset + 1 < next;
}

// Every record of `topic` below the table's offsets.
Result<TopicKeys> read_topic(const config::Config& cfg, const std::string& topic,
                             const std::vector<int64_t>& next, int timeout_ms, uint64_t* records) {
  auto c = kafka::Consumer::create(cfg.kafka);
  if (!c) return std::move(c).error();
  std::vector<kafka::PartitionStart> starts;
  std::vector<bool> open(next.size(), false);
  for (size_t p = 0; p < next.size(); ++p) {
    if (next[p] <= 0) continue;
    starts.push_back({topic, static_cast<int32_t>(p), -2});
    open[p] = true;
  }
  if (auto ok = c->assign(starts); !ok) return std::move(ok).error();
  size_t remaining = starts.size();
  TopicKeys keys;
  const auto deadline = clock::now() + std::chrono::milliseconds(timeout_ms);
  rd_kafka_message_t* batch[512];
  while (remaining > 0) {
    if (clock::now() >= deadline) {
      return make_error(Errc::kTimeout, "the topic was not read up to the table's offsets within " +
                                            std::to_string(timeout_ms) + " ms");
    }
    const size_t n = c->poll_batch(100, batch, 512);
    Result<void> status;
    for (size_t i = 0; i < n; ++i) {
      const int32_t p = batch[i]->partition;
      if (status && p >= 0 && static_cast<size_t>(p) < open.size() && open[p]) {
        auto more = take(batch[i], next[p], &keys, records);
        if (!more) status = std::move(more).error();
        if (more && !*more) {
          open[p] = false;
          --remaining;
        }
      }
      kafka::Consumer::release(batch[i]);
    }
    if (!status) return std::move(status).error();
  }
  return keys;
}

// The differences between the topic's winners and the table, one line each.
std::vector<std::string> compare(const TopicKeys& topic,
                                 const std::map<std::string, std::string>& table) {
  std::vector<std::string> diffs;
  for (const auto& [key, parts] : topic) {
    const Last* win = nullptr;
    int32_t win_p = -1;
    for (const auto& [p, l] : parts) {
      if (win == nullptr ||
          format::replaces(format::Origin{l.timestamp_ms, static_cast<uint32_t>(p)},
                           format::Origin{win->timestamp_ms, static_cast<uint32_t>(win_p)})) {
        win = &l;
        win_p = p;
      }
    }
    const auto it = table.find(key);
    const std::string at = " (topic: partition " + std::to_string(win_p) + " offset " +
                           std::to_string(win->offset) + ")";
    if (win->tombstone && it != table.end()) {
      diffs.push_back("extra\t" + json_escape(key) + "\tdeleted in the topic" + at);
    } else if (!win->tombstone && it == table.end()) {
      diffs.push_back("missing\t" + json_escape(key) + at);
    } else if (!win->tombstone && it->second != win->value) {
      diffs.push_back("different\t" + json_escape(key) + "\ttable " + json_escape(it->second) +
                      ", topic " + json_escape(win->value) + at);
    }
  }
  for (const auto& [key, value] : table) {
    if (!topic.contains(key)) {
      diffs.push_back("extra\t" + json_escape(key) + "\tno record of it in the topic");
    }
  }
  return diffs;
}

}  // namespace

int cmd_verify(const Target& t, const config::Config& cfg, int timeout_ms) {
  if (t.topic.empty() || cfg.kafka.empty()) {
    std::fprintf(stderr,
                 "kvsctl: verify: needs kvsd's config (--config) for the brokers and table %s's "
                 "topic\n",
                 t.table.c_str());
    return kExitConfig;
  }
  kvs_table* tb = nullptr;
  if (int rc = open_table(t, &tb); rc != KVS_OK) return rc;
  auto view = read_table(tb);
  kvs_close(tb);
  if (!view) {
    std::fprintf(stderr, "kvsctl: verify: %s\n", view.error().message.c_str());
    return exit_code_of(static_cast<int>(view.error().code));
  }
  uint64_t records = 0;
  auto topic = read_topic(cfg, t.topic, view->next, timeout_ms, &records);
  if (!topic) {
    std::fprintf(stderr, "kvsctl: verify: topic %s: %s\n", t.topic.c_str(),
                 topic.error().message.c_str());
    return topic.error().code == Errc::kTimeout ? kExitTempFail : kExitUnavailable;
  }
  std::vector<std::string> diffs = compare(*topic, view->contents);
  const uint64_t counted = contents_digest(view->contents);
  if (view->digest && view->digest->contents != counted) {
    char line[160];
    std::snprintf(line, sizeof line,
                  "digest\tkvsd keeps %016llx, the table's contents hash to %016llx: the segment "
                  "changed behind kvsd's back",
                  static_cast<unsigned long long>(view->digest->contents),
                  static_cast<unsigned long long>(counted));
    diffs.push_back(line);
  }
  constexpr size_t kShown = 50;
  for (size_t i = 0; i < diffs.size() && i < kShown; ++i) std::printf("%s\n", diffs[i].c_str());
  if (diffs.size() > kShown) std::printf("... and %zu more\n", diffs.size() - kShown);
  if (view->digest) {
    std::printf("digest %016llx (contents %016llx)\n",
                static_cast<unsigned long long>(view->digest->digest),
                static_cast<unsigned long long>(view->digest->contents));
  }
  std::printf(
      "table %s: %zu keys, topic %s: %llu records in %zu partitions up to the applied "
      "offsets: %s\n",
      t.table.c_str(), view->contents.size(), t.topic.c_str(),
      static_cast<unsigned long long>(records), view->next.size(),
      diffs.empty() ? "equal" : (std::to_string(diffs.size()) + " difference(s)").c_str());
  return diffs.empty() ? 0 : kExitData;
}

}  // namespace kvs::kvsctl
