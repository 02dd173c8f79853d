// What kvsd says about a topic's configuration, from the values the cluster
// describes: the settings that kvs's promises depend on. Pure functions, so
// that the rules are tested without a cluster.
#pragma once

#include <cstdlib>
#include <map>
#include <string>
#include <vector>

namespace kvs::kafka {

// One warning per setting that breaks a promise: a table equals what
// compaction keeps (cleanup.policy=compact); an acknowledged write survives
// the loss of a broker (acks=all needs min.insync.replicas >= 2, and a
// replica that missed writes must never become leader). Settings the cluster
// did not describe are not judged.
// Bytes a record batch of one record takes beyond its key and value (batch
// header 61, record framing and varints, with room to spare).
constexpr uint64_t kRecordOverheadBytes = 128;

// ... and, for a table whose records hold up to `max_key_bytes` and
// `max_value_bytes` (0: not judged), a topic that refuses such records
// (max.message.bytes): a write that kvsd accepts would fail at the broker.
inline std::vector<std::string> topic_warnings(const std::string& topic,
                                               const std::map<std::string, std::string>& cfg,
                                               uint64_t max_key_bytes = 0,
                                               uint64_t max_value_bytes = 0) {
  std::vector<std::string> out;
  if (auto it = cfg.find("max.message.bytes"); it != cfg.end() && max_value_bytes > 0) {
    const uint64_t limit = std::strtoull(it->second.c_str(), nullptr, 10);
    const uint64_t largest = max_key_bytes + max_value_bytes + kRecordOverheadBytes;
    if (limit > 0 && limit < largest) {
      const uint64_t fits = limit > max_key_bytes + kRecordOverheadBytes
                                ? limit - max_key_bytes - kRecordOverheadBytes
                                : 0;
      out.push_back("topic " + topic + " has max.message.bytes=" + it->second +
                    ", below the largest record its table allows (max_key_bytes " +
                    std::to_string(max_key_bytes) + " + max_value_bytes " +
                    std::to_string(max_value_bytes) + " + " + std::to_string(kRecordOverheadBytes) +
                    " bytes of record overhead): such writes fail at the broker; set "
                    "max_value_bytes <= " +
                    std::to_string(fits) + " or raise the topic's max.message.bytes");
    }
  }
  if (auto it = cfg.find("cleanup.policy");
      it != cfg.end() && it->second.find("compact") == std::string::npos) {
    out.push_back("topic " + topic + " has cleanup.policy=" + it->second +
                  ", not compact: retention deletes records of keys that are still current, and "
                  "kvs tables can only hold what is left; set cleanup.policy=compact on the topic");
  }
  if (auto it = cfg.find("min.insync.replicas");
      it != cfg.end() && std::strtol(it->second.c_str(), nullptr, 10) < 2) {
    out.push_back("topic " + topic + " has min.insync.replicas=" + it->second +
                  ": Kafka acknowledges a write (acks=all) once that many replicas have it, and "
                  "kvsd acknowledges it then; losing that broker loses acknowledged writes; set "
                  "min.insync.replicas=2 (with a replication factor of 3)");
  }
  if (auto it = cfg.find("unclean.leader.election.enable");
      it != cfg.end() && it->second == "true") {
    out.push_back("topic " + topic +
                  " has unclean.leader.election.enable=true: a replica that missed acknowledged "
                  "writes may become leader and drop them; set it to false");
  }
  return out;
}

}  // namespace kvs::kafka
