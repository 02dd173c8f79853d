#include "server/requests.hpp"

#include <algorithm>

#include "format/layout.hpp"

namespace kvs::daemon::server {
namespace {

// Why a table may be slow to apply a write, from its segment ("" if none
// of its partitions waits for room).
std::string hold_note(const Table& t) {
  kvs_table_stats s{};
  if (kvs_stat(t.reader, &s) != KVS_OK || s.held_partitions == 0) return "";
  return " (" + std::to_string(s.held_partitions) + " partition(s) of table " + t.name +
         " wait for room: " + format::hold_reason_text(s.hold_reason) + ")";
}

}  // namespace

void Requests::frame(Conn& c, const proto::Header& h, std::string_view body) {
  switch (static_cast<proto::Type>(h.type)) {
    case proto::Type::kPing:
      proto::encode_frame(c.out, proto::Type::kPong, 0, h.request_id, body);
      conns_.mark_dirty(c);
      return;
    case proto::Type::kStats:
      if (!body.empty()) {
        return conns_.protocol_error(c, h.request_id,
                                     "stats: a body of " + std::to_string(body.size()) + " bytes");
      }
      proto::encode_frame(c.out, proto::Type::kStatsOk, 0, h.request_id, stats_json());
      conns_.mark_dirty(c);
      return;
    case proto::Type::kPut:
    case proto::Type::kErase:
      return write(c, h, body);
    case proto::Type::kBatch:
      return batch(c, h, body);
    case proto::Type::kWait:
      return wait(c, h, body);
    case proto::Type::kOpen:
      return open(c, h, body);
    default:
      return conns_.protocol_error(c, h.request_id,
                                   "unknown request type " + proto::type_name(h.type));
  }
}

void Requests::open(Conn& c, const proto::Header& h, std::string_view body) {
  auto o = proto::decode_open(body);
  if (!o) return conns_.protocol_error(c, h.request_id, o.error().message);
  if (!c.read_refusal.empty()) {
    return conns_.reply_error(c, h.request_id, Errc::kPermission, c.read_refusal);
  }
  if (Table* t = table_or_error(c, h.request_id, o->table)) handover_.open(c, h.request_id, *t, *o);
}

Table* Requests::table_or_error(Conn& c, uint64_t id, std::string_view name) {
  for (auto& t : tables_) {
    if (t->name == name) return t.get();
  }
  std::string names;
  for (const auto& x : tables_) names += (names.empty() ? "" : ", ") + x->name;
  conns_.reply_error(
      c, id, Errc::kInvalidArgument,
      "table \"" + std::string(name) + "\" is not served by this kvsd (tables: " + names + ")");
  return nullptr;
}

std::string Requests::check_sizes(const Table& t, std::string_view key,
                                  std::optional<std::string_view> value) const {
  if (key.size() > t.max_key_bytes) {
    return "key of " + std::to_string(key.size()) + " bytes over max_key_bytes " +
           std::to_string(t.max_key_bytes) + " of table " + t.name;
  }
  if (value && value->size() > t.max_value_bytes) {
    return "value of " + std::to_string(value->size()) + " bytes over max_value_bytes " +
           std::to_string(t.max_value_bytes) + " of table " + t.name;
  }
  return "";
}

std::string Requests::check_visible(const Table& t, const proto::Header& h,
                                    std::string_view key) const {
  if ((h.flags & proto::kFlagVisible) == 0) return "";
  const int32_t p = Producer::partition_for(t, key);
  if (p < 0 || static_cast<uint32_t>(p) < t.max_partitions) return "";
  return "the key lands in partition " + std::to_string(p) + " of topic " + t.topic +
         ", which table " + t.name +
         " does not apply (max_partitions = " + std::to_string(t.max_partitions) +
         "): it can never become VISIBLE here; raise max_partitions and restart kvsd, or write "
         "without VISIBLE";
}

void Requests::write(Conn& c, const proto::Header& h, std::string_view body) {
  auto w = proto::decode_write(h.type, body);
  if (!w) return conns_.protocol_error(c, h.request_id, w.error().message);
  Table* t = table_or_error(c, h.request_id, w->table);
  if (t == nullptr) return;
  if (auto why = check_sizes(*t, w->key, w->value); !why.empty()) {
    count_error(KVS_ETOOBIG);
    return conns_.reply_error(c, h.request_id, Errc::kTooLarge, why);
  }
  if (auto why = check_visible(*t, h, w->key); !why.empty()) {
    count_error(KVS_ENOTSUP);
    return conns_.reply_error(c, h.request_id, Errc::kUnsupported, why + "; nothing was written");
  }
  const auto reply = static_cast<proto::Type>(h.type) == proto::Type::kPut ? proto::Type::kPutOk
                                                                           : proto::Type::kEraseOk;
  Request& r = new_request(c, h, reply, t, w->timeout_ms, 1);
  producer_.produce(r, 0, w->key, w->value);
  release(r);
}

void Requests::batch(Conn& c, const proto::Header& h, std::string_view body) {
  auto b = proto::decode_batch(body);
  if (!b) return conns_.protocol_error(c, h.request_id, b.error().message);
  Table* t = table_or_error(c, h.request_id, b->table);
  if (t == nullptr) return;
  for (size_t i = 0; i < b->ops.size(); ++i) {
    if (auto why = check_sizes(*t, b->ops[i].key, b->ops[i].value); !why.empty()) {
      count_error(KVS_ETOOBIG);
      return conns_.reply_error(c, h.request_id, Errc::kTooLarge,
                                "batch operation " + std::to_string(i) + ": " + why +
                                    " (nothing of the batch was written)");
    }
    if (auto why = check_visible(*t, h, b->ops[i].key); !why.empty()) {
      count_error(KVS_ENOTSUP);
      return conns_.reply_error(c, h.request_id, Errc::kUnsupported,
                                "batch operation " + std::to_string(i) + ": " + why +
                                    " (nothing of the batch was written)");
    }
  }
  Request& r = new_request(c, h, proto::Type::kBatchOk, t, b->timeout_ms, b->ops.size());
  for (uint32_t i = 0; i < b->ops.size(); ++i) {
    producer_.produce(r, i, b->ops[i].key, b->ops[i].value);
  }
  release(r);
}

void Requests::wait(Conn& c, const proto::Header& h, std::string_view body) {
  auto w = proto::decode_wait(body);
  if (!w) return conns_.protocol_error(c, h.request_id, w.error().message);
  Table* t = table_or_error(c, h.request_id, w->table);
  if (t == nullptr) return;
  std::string why;
  const bool done = is_applied(*t, w->token, &why);
  if (!why.empty()) return conns_.reply_error(c, h.request_id, Errc::kInvalidArgument, why);
  if (done) {
    proto::encode_frame(c.out, proto::Type::kWaitOk, 0, h.request_id, {});
    conns_.mark_dirty(c);
    return;
  }
  Request& r = new_request(c, h, proto::Type::kWaitOk, t, w->timeout_ms, 1);
  r.results[0].token = w->token;
  visible_.push_back({{r.slot, r.seq}, 0, t, w->token});
  visible_count_.store(visible_.size());
  // Applied meanwhile? (see Server::applied for the ordering)
  check_visible();
}

Request& Requests::new_request(Conn& c, const proto::Header& h, proto::Type reply, Table* t,
                               uint32_t timeout_ms, size_t ops) {
  if (free_slots_.empty()) {
    slots_.emplace_back();
    slots_.back().slot = static_cast<uint32_t>(slots_.size() - 1);
    free_slots_.push_back(slots_.back().slot);
    unanswered_seq_.push_back(0);
  }
  Request& r = slots_[free_slots_.back()];
  free_slots_.pop_back();
  // The next request of this read will likely come soon: start loading it.
  if (!free_slots_.empty()) {
    const char* next = reinterpret_cast<const char*>(&slots_[free_slots_.back()]);
    for (size_t off = 0; off < sizeof(Request); off += 64) __builtin_prefetch(next + off, 1);
  }
  r.live = true;
  r.seq = next_seq_++;
  unanswered_seq_[r.slot] = r.seq;
  r.conn_id = c.id;
  r.id = h.request_id;
  r.reply = reply;
  r.visible = (h.flags & proto::kFlagVisible) != 0 || reply == proto::Type::kWaitOk;
  r.answered = false;
  r.table = t;
  r.timeout_ms = timeout_ms != 0 ? timeout_ms : cfg_.write_timeout_ms;
  r.deadline = now_ + std::chrono::milliseconds(r.timeout_ms);
  r.outstanding = 0;
  r.remaining = static_cast<uint32_t>(ops);
  r.parked = 0;
  r.results.assign(ops, proto::BatchResult{1, {}});  // 1: no outcome yet
  r.error.clear();
  // Stable addresses: librdkafka holds pointers to them until every delivery
  // report is back, and the slot is reused only after that.
  r.refs.clear();
  r.refs.reserve(ops);
  for (uint32_t i = 0; i < ops; ++i) r.refs.push_back({&r, i});
  ++c.pending;
  ++unanswered_;
  add_deadline(r);
  return r;
}

void Requests::add_deadline(const Request& r) {
  const Deadline d{r.deadline, {r.slot, r.seq}};
  if (r.timeout_ms == cfg_.write_timeout_ms &&
      (fifo_deadlines_.empty() || fifo_deadlines_.back().first <= d.first)) {
    fifo_deadlines_.push_back(d);
  } else {
    heap_deadlines_.push_back(d);
    std::push_heap(heap_deadlines_.begin(), heap_deadlines_.end(), later);
  }
  if (fifo_deadlines_.size() + heap_deadlines_.size() > 2 * unanswered_ + 1024) {
    compact_deadlines();
  }
}

std::optional<clock::time_point> Requests::next_deadline() {
  while (!fifo_deadlines_.empty() && !pending_deadline(fifo_deadlines_.front())) {
    fifo_deadlines_.pop_front();
  }
  while (!heap_deadlines_.empty() && !pending_deadline(heap_deadlines_.front())) {
    std::pop_heap(heap_deadlines_.begin(), heap_deadlines_.end(), later);
    heap_deadlines_.pop_back();
  }
  std::optional<clock::time_point> d;
  if (!fifo_deadlines_.empty()) d = fifo_deadlines_.front().first;
  if (!heap_deadlines_.empty() && (!d || heap_deadlines_.front().first < *d)) {
    d = heap_deadlines_.front().first;
  }
  return d;
}

void Requests::compact_deadlines() {
  std::erase_if(fifo_deadlines_, [&](const Deadline& d) { return !pending_deadline(d); });
  std::erase_if(heap_deadlines_, [&](const Deadline& d) { return !pending_deadline(d); });
  std::make_heap(heap_deadlines_.begin(), heap_deadlines_.end(), later);
}

void Requests::op_done(Request& r, uint32_t index, Errc code, const std::string& message) {
  if (r.answered || r.results[index].code != 1) return;
  r.results[index].code = static_cast<int32_t>(code);
  if (code != Errc::kOk) {
    count_error(static_cast<int>(code));
    if (r.error.empty()) r.error = message;
  } else if (r.reply != proto::Type::kWaitOk) {
    ++n_acked_;
  }
  if (--r.remaining == 0) answer(r);
}

void Requests::delivered(const rd_kafka_message_t* m) {
  auto* ref = static_cast<MsgRef*>(m->_private);
  Request& r = *ref->req;
  --r.outstanding;
  if (!r.answered) {
    if (m->err) {
      std::string why = std::string("Kafka did not store the record in ") + r.table->topic + ": " +
                        rd_kafka_err2str(m->err);
      if (errc_of(m->err) == Errc::kTimeout) why = producer_.no_ack_message(cfg_.write_timeout_ms);
      if (m->err == RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION ||
          m->err == RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC ||
          m->err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) {
        why = "topic " + r.table->topic + " (table " + r.table->name +
              ") does not exist, or lost the record's partition: was it deleted? kvsd never "
              "creates a table's topic on a write (" +
              rd_kafka_err2str(m->err) + ")";
      }
      op_done(r, ref->index, errc_of(m->err), why);
    } else {
      const proto::Token tok{m->partition, m->offset};
      r.results[ref->index].token = tok;
      std::string why;
      if (r.visible && !is_applied(*r.table, tok, &why)) {
        if (why.empty()) {
          visible_.push_back({{r.slot, r.seq}, ref->index, r.table, tok});
          visible_count_.store(visible_.size());
        } else {
          // Written, but this kvsd cannot show it: said now, not at the timeout.
          op_done(r, ref->index, Errc::kUnsupported,
                  "written at " + std::to_string(tok.partition) + ":" + std::to_string(tok.offset) +
                      ", but never VISIBLE here: " + why);
        }
      } else {
        op_done(r, ref->index, Errc::kOk, "");
      }
    }
  }
  release(r);
}

bool Requests::is_applied(const Table& t, proto::Token tok, std::string* why) {
  int64_t next = -1;
  // A partition the topic gained lately is followed within about a second:
  // waited for, unless the table cannot track it at all.
  if (tok.partition < 0 || static_cast<uint32_t>(tok.partition) >= t.max_partitions) {
    *why = "table " + t.name + " tracks at most " + std::to_string(t.max_partitions) +
           " partitions (max_partitions), no partition " + std::to_string(tok.partition);
    return false;
  }
  if (static_cast<uint32_t>(tok.partition) >= kvs_partition_count(t.reader)) return false;
  if (kvs_partition_offsets(t.reader, static_cast<uint32_t>(tok.partition), &next, nullptr) !=
      KVS_OK) {
    *why = kvs_last_error();
    return false;
  }
  return next > tok.offset;
}

void Requests::check_visible() {
  if (visible_.empty()) return;
  size_t kept = 0;
  for (size_t i = 0; i < visible_.size(); ++i) {
    Visible v = visible_[i];
    Request* found = find(v.req);
    if (found == nullptr || found->answered) continue;
    std::string why;
    if (is_applied(*v.table, v.token, &why)) {
      op_done(*found, v.index, Errc::kOk, "");
      release(*found);
    } else {
      visible_[kept++] = v;
    }
  }
  visible_.resize(kept);
  visible_count_.store(visible_.size());
}

void Requests::expire(clock::time_point t) {
  for (;;) {
    ReqRef due;
    if (!fifo_deadlines_.empty() && fifo_deadlines_.front().first <= t) {
      due = fifo_deadlines_.front().second;
      fifo_deadlines_.pop_front();
    } else if (!heap_deadlines_.empty() && heap_deadlines_.front().first <= t) {
      due = heap_deadlines_.front().second;
      std::pop_heap(heap_deadlines_.begin(), heap_deadlines_.end(), later);
      heap_deadlines_.pop_back();
    } else {
      break;
    }
    Request* found = find(due);
    if (found == nullptr || found->answered) continue;
    time_out(*found);
    release(*found);
  }
}

// Answers r, whose deadline passed, saying for each operation without an
// outcome how far it got.
void Requests::time_out(Request& r) {
  const bool queued = r.parked > 0;
  for (uint32_t i = 0; i < r.results.size(); ++i) {
    auto& res = r.results[i];
    if (res.code != 1) continue;
    const bool acked = res.token.offset >= 0;
    if (queued && !acked && r.error.empty()) {
      res.code = KVS_EQUEUE;
      r.error = "kvsd's producer queue stayed full for " + std::to_string(r.timeout_ms) +
                " ms; writes arrive faster than Kafka takes them";
    } else {
      res.code = KVS_ETIMEDOUT;
      if (r.error.empty()) {
        const std::string at = r.table->topic + "[" + std::to_string(res.token.partition) +
                               "] offset " + std::to_string(res.token.offset);
        const std::string within = " within " + std::to_string(r.timeout_ms) + " ms";
        r.error = r.reply == proto::Type::kWaitOk
                      ? "table " + r.table->name + " has not applied " + at + within
                  : acked
                      ? "stored in Kafka at " + at + " but not applied to the local table" +
                            within + hold_note(*r.table)
                      : producer_.no_ack_message(r.timeout_ms) + "; the write may still be applied";
      }
    }
    if (res.code == KVS_ETIMEDOUT || res.code == KVS_EQUEUE) count_error(res.code);
  }
  r.remaining = 0;
  answer(r);
}

void Requests::count_error(int code) {
  ++n_write_errors_;
  write_stats_.count_error(code);
}

void Requests::answer(Request& r) {
  if (r.answered) return;
  r.answered = true;
  observe_latency(r);
  unanswered_seq_[r.slot] = 0;
  --unanswered_;
  Conn* c = conns_.find(r.conn_id);
  if (c == nullptr) return;  // the client left
  --c->pending;
  if (c->eof && c->pending == 0) c->closing = true;
  const auto& first = r.results[0];
  if (r.reply == proto::Type::kBatchOk) {
    proto::encode_batch_ok(c->out, r.id, {r.results.data(), r.results.size()});
  } else if (first.code != KVS_OK) {
    proto::encode_error(c->out, r.id, first.code, r.error);
  } else if (r.reply == proto::Type::kWaitOk) {
    proto::encode_frame(c->out, proto::Type::kWaitOk, 0, r.id, {});
  } else {
    proto::encode_token(c->out, r.reply, r.id, first.token);
  }
  conns_.mark_dirty(*c);
}

// A write answered with success: from its arrival (its deadline less its
// timeout) to now.
void Requests::observe_latency(const Request& r) {
  if (r.reply == proto::Type::kWaitOk) return;
  for (const auto& res : r.results) {
    if (res.code != KVS_OK) return;
  }
  const auto arrived = r.deadline - std::chrono::milliseconds(r.timeout_ms);
  const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(now_ - arrived).count();
  (r.visible ? write_stats_.visible : write_stats_.acked)
      .observe(static_cast<uint64_t>(std::max<int64_t>(0, ns)));
}

void Requests::release(Request& r) {
  // librdkafka holds &r.refs[i] until each delivery report has come back.
  if (r.live && r.answered && r.outstanding == 0 && r.parked == 0) {
    r.live = false;
    free_slots_.push_back(r.slot);
  }
}

void Requests::answer_all_at_stop() {
  std::vector<Request*> open;
  for (auto& r : slots_) {
    if (r.live && !r.answered) open.push_back(&r);
  }
  for (Request* r : open) {
    for (uint32_t i = 0; i < r->results.size(); ++i) {
      if (r->results[i].code == 1) {
        r->results[i].code = KVS_ETIMEDOUT;
        if (r->error.empty()) r->error = "kvsd is stopping; the write may still be applied";
      }
    }
    r->remaining = 0;
    answer(*r);
  }
}

void Requests::add_counters(Counters& c) const {
  c.writes_acked = n_acked_;
  c.write_errors = n_write_errors_;
  c.pending = unanswered_;
  c.queue_full_waits = producer_.queue_full_waits();
  c.producer_queue = static_cast<uint64_t>(std::max(0, producer_.queue_length()));
}

std::string Requests::stats_json() {
  std::string j = "{\"server\":{" + conns_.stats_counts_json() +
                  ",\"writes_acked\":" + std::to_string(n_acked_) +
                  ",\"write_errors\":" + std::to_string(n_write_errors_) + "," +
                  conns_.stats_flow_json() + ",\"pending\":" + std::to_string(unanswered_) +
                  ",\"queue_full_waits\":" + std::to_string(producer_.queue_full_waits()) +
                  ",\"producer_queue\":" + std::to_string(producer_.queue_length()) +
                  "},\"tables\":[";
  bool first = true;
  for (const auto& t : tables_) {
    j += first ? "" : ",";
    first = false;
    const int st = kvs_state(t->reader);
    j += "{\"name\":\"" + t->name + "\",\"topic\":\"" + t->topic + "\",\"state\":\"" +
         (st == KVS_STATE_READY ? "READY" : "BOOTSTRAPPING") +
         "\",\"entries\":" + std::to_string(kvs_size(t->reader)) +
         ",\"topic_partitions\":" + std::to_string(t->partitions.load()) +
         ",\"max_partitions\":" + std::to_string(t->max_partitions) + ",\"partitions\":[";
    const uint32_t n = kvs_partition_count(t->reader);
    for (uint32_t p = 0; p < n; ++p) {
      int64_t next = 0, hw = 0;
      if (kvs_partition_offsets(t->reader, p, &next, &hw) != KVS_OK) continue;
      j += (p ? "," : "") + std::string("{\"partition\":") + std::to_string(p) +
           ",\"next_offset\":" + std::to_string(next) +
           ",\"high_watermark\":" + std::to_string(hw) +
           ",\"lag\":" + std::to_string(format::partition_lag(next, hw)) + "}";
    }
    j += "],\"snapshot\":" + (snapshots_ ? snapshots_->json(t->name) : "null") + "}";
  }
  return j + "]}";
}

}  // namespace kvs::daemon::server
