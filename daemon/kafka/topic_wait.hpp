// What kvsd does at start while it learns a topic's partition count: the
// policy alone (no Kafka, no clock of its own), so that it can be tested.
//
// A cluster that does not answer and a topic it calls unknown are both
// retried, with backoff, for up to `bound`: a broker that has just started
// answers "unknown topic" for a moment, before it has loaded its metadata,
// and that is no reason to exit (or to create the topic). Only a topic that
// stays unknown for `create_grace` is created (where the config allows), and
// only once; at the bound kvsd gives up with the last answer.
#pragma once

#include <algorithm>
#include <chrono>

#include "kvs/result.hpp"

namespace kvs::kafka {

class TopicWait {
 public:
  using Clock = std::chrono::steady_clock;
  enum class Next { kUse, kCreate, kRetry, kGiveUp };

  TopicWait(std::chrono::milliseconds bound, bool may_create, Clock::time_point start,
            std::chrono::milliseconds create_grace = std::chrono::seconds(3))
      : bound_(bound), grace_(create_grace), start_(start), may_create_(may_create) {}

  // After a metadata answer (a partition count, kNotFound for an unknown
  // topic, or another error for a cluster that did not answer).
  Next after(const Result<int32_t>& answer, Clock::time_point now) {
    if (answer) return Next::kUse;
    if (answer.error().code == Errc::kNotFound) {
      if (!unknown_) unknown_since_ = now;
      unknown_ = true;
      if (may_create_ && !created_ && now - unknown_since_ >= grace_) {
        created_ = true;
        return Next::kCreate;
      }
    } else {
      unknown_ = false;  // no answer is no evidence that the topic is missing
    }
    return now - start_ >= bound_ ? Next::kGiveUp : Next::kRetry;
  }

  // The pause before the next try: 100 ms, doubling to 2 s.
  std::chrono::milliseconds backoff() {
    const auto b = backoff_;
    backoff_ = std::min(backoff_ * 2, std::chrono::milliseconds(2000));
    return b;
  }

  bool unknown() const { return unknown_; }
  bool created() const { return created_; }

 private:
  std::chrono::milliseconds bound_, grace_;
  Clock::time_point start_, unknown_since_{};
  std::chrono::milliseconds backoff_{100};
  bool may_create_, unknown_ = false, created_ = false;
};

}  // namespace kvs::kafka
