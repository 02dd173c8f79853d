#include "kafka/consumer.hpp"

#include <librdkafka/rdkafka.h>

#include <utility>

#include "kafka/properties.hpp"
#include "kafka/rdkafka_log.hpp"
#include "kafka/shutdown.hpp"
#include "kafka/stats.hpp"

namespace kvs::kafka {
namespace {

Errc admin_errc(rd_kafka_resp_err_t e) {
  switch (e) {
    case RD_KAFKA_RESP_ERR__UNSUPPORTED_FEATURE:
    case RD_KAFKA_RESP_ERR_UNSUPPORTED_VERSION:
    case RD_KAFKA_RESP_ERR_INVALID_REQUEST:
      return Errc::kUnsupported;
    case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED:
      return Errc::kPermission;
    case RD_KAFKA_RESP_ERR__TIMED_OUT:
    case RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT:
    case RD_KAFKA_RESP_ERR__TRANSPORT:
    case RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN:
      return Errc::kTimeout;
    default:
      return Errc::kSystem;
  }
}

// Waits for the one result event an admin call posts on `q`.
rd_kafka_event_t* admin_result(rd_kafka_queue_t* q, int timeout_ms) {
  return rd_kafka_queue_poll(q, timeout_ms + 1000);
}

}  // namespace

void Consumer::serve_events() {
  if (rk_ != nullptr) rd_kafka_poll(rk_, 0);
}

Result<Consumer> Consumer::create(
    const std::vector<std::pair<std::string, std::string>>& properties) {
  char err[512];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  route_rdkafka_logs(conf);
  keep_stats(conf);
  // Defaults for bootstrap speed, which [kafka] may override. librdkafka
  // 2.0.2 stops fetching once the consumer queue holds queued.min.messages
  // (default 100000) and resumes only on a 1-second timer: bootstrapping a
  // large topic would stall a second at a time. The byte limit still bounds
  // the memory that prefetching takes.
  // A broker that does not answer is tried again within a second (not
  // librdkafka's 10 s): a kvsd waiting at start turns READY soon after the
  // cluster is back.
  const std::pair<const char*, const char*> defaults[] = {
      {"queued.min.messages", "10000000"},
      {"queued.max.messages.kbytes", "262144"},
      {"reconnect.backoff.max.ms", "1000"},
  };
  for (const auto& [k, v] : defaults) {
    if (rd_kafka_conf_set(conf, k, v, err, sizeof err) != RD_KAFKA_CONF_OK) {
      rd_kafka_conf_destroy(conf);
      return make_error(Errc::kInvalidArgument, std::string("librdkafka ") + k + ": " + err);
    }
  }
  for (const auto& [k, v] : properties) {
    if (rd_kafka_conf_set(conf, k.c_str(), v.c_str(), err, sizeof err) != RD_KAFKA_CONF_OK) {
      rd_kafka_conf_destroy(conf);
      return make_error(Errc::kInvalidArgument, "[kafka] " + k + " = \"" + v + "\": " + err);
    }
  }
  // kvsd's own needs, whatever [kafka] says.
  for (const auto& o : consumer_overrides()) {
    if (rd_kafka_conf_set(conf, o.key.c_str(), o.value.c_str(), err, sizeof err) !=
        RD_KAFKA_CONF_OK) {
      rd_kafka_conf_destroy(conf);
      return make_error(Errc::kInvalidArgument, "librdkafka " + o.key + ": " + err);
    }
  }
  Consumer c;
  c.rk_ = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
  if (c.rk_ == nullptr) {
    rd_kafka_conf_destroy(conf);
    return make_error(Errc::kInvalidArgument, std::string("[kafka]: ") + err);
  }
  c.queue_ = rd_kafka_queue_get_consumer(c.rk_);
  return c;
}

Consumer::Consumer(Consumer&& o) noexcept
    : rk_(o.rk_),
      queue_(o.queue_),
      admin_queue_(o.admin_queue_),
      policy_topics_(std::move(o.policy_topics_)) {
  o.rk_ = nullptr;
  o.queue_ = nullptr;
  o.admin_queue_ = nullptr;
}

Consumer::~Consumer() { close(kDestroyLimit); }

bool Consumer::close(std::chrono::milliseconds limit) {
  rd_kafka_t* rk = std::exchange(rk_, nullptr);
  rd_kafka_queue_t* queue = std::exchange(queue_, nullptr);
  rd_kafka_queue_t* admin = std::exchange(admin_queue_, nullptr);
  return destroy_within(rk, limit, "consumer", [rk, queue, admin] {
    if (queue) rd_kafka_queue_destroy(queue);
    if (admin) rd_kafka_queue_destroy(admin);
    rd_kafka_consumer_close(rk);
  });
}

Result<int32_t> Consumer::partition_count(const std::string& topic, int timeout_ms) {
  rd_kafka_topic_t* rkt = rd_kafka_topic_new(rk_, topic.c_str(), nullptr);
  const rd_kafka_metadata_t* md = nullptr;
  const rd_kafka_resp_err_t e = rd_kafka_metadata(rk_, 0, rkt, &md, timeout_ms);
  rd_kafka_topic_destroy(rkt);
  if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
    return make_error(Errc::kTimeout, "metadata of topic '" + topic + "': " + rd_kafka_err2str(e));
  }
  Result<int32_t> out = make_error(Errc::kNotFound, "topic '" + topic + "' does not exist");
  if (md->topic_cnt == 1) {
    const auto& t = md->topics[0];
    if (t.err == RD_KAFKA_RESP_ERR_NO_ERROR && t.partition_cnt > 0) {
      out = t.partition_cnt;
    } else if (t.err != RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART &&
               t.err != RD_KAFKA_RESP_ERR_NO_ERROR) {
      out = make_error(Errc::kTimeout,
                       "metadata of topic '" + topic + "': " + rd_kafka_err2str(t.err));
    }
  }
  rd_kafka_metadata_destroy(md);
  return out;
}

Result<std::vector<std::pair<int64_t, int64_t>>> Consumer::watermarks(const std::string& topic,
                                                                      int32_t partitions,
                                                                      int timeout_ms) {
  // ListOffsets with the timestamps -2 (earliest) and -1 (latest): what
  // rd_kafka_query_watermark_offsets asks, for all partitions per request.
  std::vector<std::pair<int64_t, int64_t>> out(static_cast<size_t>(partitions));
  for (const int64_t which : {int64_t{-2}, int64_t{-1}}) {
    rd_kafka_topic_partition_list_t* list = rd_kafka_topic_partition_list_new(partitions);
    for (int32_t p = 0; p < partitions; ++p)
      rd_kafka_topic_partition_list_add(list, topic.c_str(), p)->offset = which;
    const rd_kafka_resp_err_t e = rd_kafka_offsets_for_times(rk_, list, timeout_ms);
    std::string why;
    Errc code = Errc::kTimeout;
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR) why = rd_kafka_err2str(e);
    for (int i = 0; i < list->cnt && why.empty(); ++i) {
      const rd_kafka_topic_partition_t& tp = list->elems[i];
      if (tp.err != RD_KAFKA_RESP_ERR_NO_ERROR || tp.offset < 0) {
        why = "partition " + std::to_string(tp.partition) + ": " +
              (tp.err ? rd_kafka_err2str(tp.err) : "no offset in the answer");
        const bool transient = tp.err == RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE ||
                               tp.err == RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION ||
                               tp.err == RD_KAFKA_RESP_ERR__TIMED_OUT ||
                               tp.err == RD_KAFKA_RESP_ERR__TRANSPORT ||
                               tp.err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART;
        if (!transient) code = Errc::kKafka;
        break;
      }
      auto& [lo, hi] = out[static_cast<size_t>(tp.partition)];
      (which == -2 ? lo : hi) = tp.offset;
    }
    rd_kafka_topic_partition_list_destroy(list);
    if (!why.empty()) {
      return make_error(code, std::string(which == -2 ? "earliest" : "latest") + " offsets of " +
                                  topic + ": " + why);
    }
  }
  return out;
}

int64_t Consumer::cached_high_watermark(const std::string& topic, int32_t partition) {
  int64_t lo = -1, hi = -1;
  if (rd_kafka_get_watermark_offsets(rk_, topic.c_str(), partition, &lo, &hi) !=
      RD_KAFKA_RESP_ERR_NO_ERROR) {
    return -1;
  }
  return hi;
}

Result<void> Consumer::assign(const std::vector<PartitionStart>& starts) {
  rd_kafka_topic_partition_list_t* list =
      rd_kafka_topic_partition_list_new(static_cast<int>(starts.size()));
  for (const auto& s : starts) {
    rd_kafka_topic_partition_list_add(list, s.topic.c_str(), s.partition)->offset =
        s.offset < 0 ? RD_KAFKA_OFFSET_BEGINNING : s.offset;
  }
  const rd_kafka_resp_err_t e = rd_kafka_assign(rk_, list);
  rd_kafka_topic_partition_list_destroy(list);
  if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
    return make_error(Errc::kSystem, std::string("assigning partitions: ") + rd_kafka_err2str(e));
  }
  return {};
}

Result<void> Consumer::reassign_from_beginning(const std::string& topic, int32_t partitions) {
  // A partition whose offset was reset with an error has stopped fetching
  // and refuses a seek: take it out of the assignment and put it back.
  rd_kafka_topic_partition_list_t* list = rd_kafka_topic_partition_list_new(partitions);
  for (int32_t p = 0; p < partitions; ++p) {
    rd_kafka_topic_partition_list_add(list, topic.c_str(), p)->offset = RD_KAFKA_OFFSET_BEGINNING;
  }
  rd_kafka_error_t* e = rd_kafka_incremental_unassign(rk_, list);
  if (e == nullptr) e = rd_kafka_incremental_assign(rk_, list);
  rd_kafka_topic_partition_list_destroy(list);
  if (e != nullptr) {
    const std::string what = rd_kafka_error_string(e);
    rd_kafka_error_destroy(e);
    return make_error(Errc::kSystem, "assigning " + topic + " from the beginning: " + what);
  }
  return {};
}

namespace {

// An incremental (un)assignment of one partition; `what` names it in errors.
Result<void> change_assignment(rd_kafka_t* rk, const std::string& topic, int32_t partition,
                               int64_t offset, bool add) {
  rd_kafka_topic_partition_list_t* list = rd_kafka_topic_partition_list_new(1);
  rd_kafka_topic_partition_list_add(list, topic.c_str(), partition)->offset = offset;
  rd_kafka_error_t* e =
      add ? rd_kafka_incremental_assign(rk, list) : rd_kafka_incremental_unassign(rk, list);
  rd_kafka_topic_partition_list_destroy(list);
  if (e == nullptr) return {};
  const std::string what = rd_kafka_error_string(e);
  rd_kafka_error_destroy(e);
  return make_error(Errc::kSystem, std::string(add ? "resuming " : "pausing ") + topic + "[" +
                                       std::to_string(partition) + "]: " + what);
}

}  // namespace

Result<void> Consumer::stop_partition(const std::string& topic, int32_t partition) {
  return change_assignment(rk_, topic, partition, RD_KAFKA_OFFSET_INVALID, false);
}

Result<void> Consumer::start_partition(const std::string& topic, int32_t partition,
                                       int64_t offset) {
  return change_assignment(rk_, topic, partition, offset, true);
}

Result<void> Consumer::create_topic(const std::string& topic, int32_t partitions,
                                    int32_t replication_factor,
                                    const std::map<std::string, std::string>& configs,
                                    int timeout_ms) {
  char err[512];
  rd_kafka_NewTopic_t* nt =
      rd_kafka_NewTopic_new(topic.c_str(), partitions, replication_factor, err, sizeof err);
  if (nt == nullptr) {
    return make_error(Errc::kInvalidArgument, "creating topic " + topic + ": " + err);
  }
  rd_kafka_NewTopic_set_config(nt, "cleanup.policy", "compact");
  for (const auto& [k, v] : configs) rd_kafka_NewTopic_set_config(nt, k.c_str(), v.c_str());
  rd_kafka_AdminOptions_t* opts = rd_kafka_AdminOptions_new(rk_, RD_KAFKA_ADMIN_OP_CREATETOPICS);
  rd_kafka_AdminOptions_set_request_timeout(opts, timeout_ms, err, sizeof err);
  rd_kafka_AdminOptions_set_operation_timeout(opts, timeout_ms, err, sizeof err);
  rd_kafka_queue_t* q = rd_kafka_queue_new(rk_);
  rd_kafka_CreateTopics(rk_, &nt, 1, opts, q);
  rd_kafka_event_t* ev = admin_result(q, timeout_ms);
  Result<void> out = make_error(Errc::kTimeout, "creating topic " + topic + ": no answer within " +
                                                    std::to_string(timeout_ms) + " ms");
  if (ev != nullptr) {
    rd_kafka_resp_err_t e = rd_kafka_event_error(ev);
    std::string what = e ? rd_kafka_event_error_string(ev) : "";
    if (e == RD_KAFKA_RESP_ERR_NO_ERROR) {
      size_t n = 0;
      const rd_kafka_topic_result_t** res =
          rd_kafka_CreateTopics_result_topics(rd_kafka_event_CreateTopics_result(ev), &n);
      if (n == 1) {
        e = rd_kafka_topic_result_error(res[0]);
        const char* m = rd_kafka_topic_result_error_string(res[0]);
        what = m ? m : rd_kafka_err2str(e);
      }
    }
    if (e == RD_KAFKA_RESP_ERR_NO_ERROR || e == RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) {
      out = {};
    } else {
      out = make_error(admin_errc(e), "creating topic " + topic + ": " + what);
    }
    rd_kafka_event_destroy(ev);
  }
  rd_kafka_queue_destroy(q);
  rd_kafka_AdminOptions_destroy(opts);
  rd_kafka_NewTopic_destroy(nt);
  return out;
}

void Consumer::request_topic_configs(const std::vector<std::string>& topics, int timeout_ms) {
  if (topics.empty()) return;
  char err[512];
  std::vector<rd_kafka_ConfigResource_t*> res;
  for (const auto& t : topics) {
    res.push_back(rd_kafka_ConfigResource_new(RD_KAFKA_RESOURCE_TOPIC, t.c_str()));
  }
  rd_kafka_AdminOptions_t* opts = rd_kafka_AdminOptions_new(rk_, RD_KAFKA_ADMIN_OP_DESCRIBECONFIGS);
  rd_kafka_AdminOptions_set_request_timeout(opts, timeout_ms, err, sizeof err);
  if (admin_queue_ == nullptr) admin_queue_ = rd_kafka_queue_new(rk_);
  rd_kafka_DescribeConfigs(rk_, res.data(), res.size(), opts, admin_queue_);
  rd_kafka_AdminOptions_destroy(opts);
  for (auto* r : res) rd_kafka_ConfigResource_destroy(r);
  policy_topics_ = topics;
}

std::optional<std::vector<std::pair<std::string, Result<Consumer::TopicConfigs>>>>
Consumer::poll_topic_configs() {
  if (admin_queue_ == nullptr || policy_topics_.empty()) return std::nullopt;
  rd_kafka_event_t* ev = rd_kafka_queue_poll(admin_queue_, 0);
  if (ev == nullptr) return std::nullopt;
  std::vector<std::pair<std::string, Result<TopicConfigs>>> out;
  const rd_kafka_resp_err_t all = rd_kafka_event_error(ev);
  const std::string all_what = all ? rd_kafka_event_error_string(ev) : "";
  size_t n = 0;
  const rd_kafka_ConfigResource_t** rs = all ? nullptr
                                             : rd_kafka_DescribeConfigs_result_resources(
                                                   rd_kafka_event_DescribeConfigs_result(ev), &n);
  for (const auto& topic : policy_topics_) {
    Result<TopicConfigs> r = make_error(
        admin_errc(all), "describing topic " + topic + ": " + (all ? all_what : "no answer"));
    for (size_t i = 0; i < n; ++i) {
      if (topic != rd_kafka_ConfigResource_name(rs[i])) continue;
      const rd_kafka_resp_err_t e = rd_kafka_ConfigResource_error(rs[i]);
      if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
        const char* m = rd_kafka_ConfigResource_error_string(rs[i]);
        r = make_error(admin_errc(e),
                       "describing topic " + topic + ": " + (m ? m : rd_kafka_err2str(e)));
        break;
      }
      size_t cn = 0;
      const rd_kafka_ConfigEntry_t** entries = rd_kafka_ConfigResource_configs(rs[i], &cn);
      TopicConfigs values;
      for (size_t j = 0; j < cn; ++j) {
        const char* v = rd_kafka_ConfigEntry_value(entries[j]);
        values[rd_kafka_ConfigEntry_name(entries[j])] = v ? v : "";
      }
      r = std::move(values);
    }
    out.emplace_back(topic, std::move(r));
  }
  rd_kafka_event_destroy(ev);
  policy_topics_.clear();
  return out;
}

Result<std::string> Consumer::cluster_id(int timeout_ms) {
  char* id = rd_kafka_clusterid(rk_, timeout_ms);
  if (id == nullptr) {
    return make_error(Errc::kTimeout, "no cluster id from the brokers within " +
                                          std::to_string(timeout_ms) + " ms");
  }
  std::string out(id);
  rd_kafka_mem_free(rk_, id);
  return out;
}

size_t Consumer::poll_batch(int timeout_ms, rd_kafka_message_s** out, size_t max) {
  // consume_batch_queue waits for a full batch or the whole timeout: a lone
  // record would wait timeout_ms. So: wait for one, then take what is there.
  if (max == 0) return 0;
  out[0] = rd_kafka_consume_queue(queue_, timeout_ms);
  if (out[0] == nullptr) return 0;
  const ssize_t n = rd_kafka_consume_batch_queue(queue_, 0, out + 1, max - 1);
  return 1 + (n < 0 ? 0 : static_cast<size_t>(n));
}

void Consumer::release(rd_kafka_message_s* m) { rd_kafka_message_destroy(m); }

}  // namespace kvs::kafka
