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
inline std::vector<std::string> topic_warnings(const std::string& topic,
                                               const std::map<std::string, std::string>& cfg) {
  std::vector<std::string> out;
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
