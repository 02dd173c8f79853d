#include "kafka/watermark_poller.hpp"

#include "log.hpp"

namespace kvs::kafka {

WatermarkPoller::WatermarkPoller(Consumer& consumer, std::chrono::milliseconds interval,
                                 std::chrono::milliseconds timeout)
    : consumer_(consumer), interval_(interval), timeout_(timeout), thread_([this] { run(); }) {}

WatermarkPoller::~WatermarkPoller() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

void WatermarkPoller::follow(const std::string& topic, int32_t partitions) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto [it, added] = topics_.try_emplace(topic, partitions);
    if (!added && it->second == partitions) return;
    it->second = partitions;
    changed_ = true;
  }
  wake_.notify_all();
}

int64_t WatermarkPoller::high_watermark(const std::string& topic, int32_t partition) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = hw_.find(topic);
  if (it == hw_.end() || partition < 0 || static_cast<size_t>(partition) >= it->second.size())
    return -1;
  return it->second[static_cast<size_t>(partition)];
}

int32_t WatermarkPoller::partition_count(const std::string& topic) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = counts_.find(topic);
  return it == counts_.end() ? -1 : it->second;
}

void WatermarkPoller::run() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    changed_ = false;
    const auto topics = topics_;
    lock.unlock();
    // One metadata request per topic: a request for "the topics this client
    // knows" lets the broker auto-create one of them that was deleted
    // (librdkafka 2.0.2 allows it when they are all in its cache).
    for (const auto& [topic, n] : topics) {
      auto count = consumer_.partition_count(topic, static_cast<int>(timeout_.count()));
      if (!count) continue;
      std::lock_guard<std::mutex> store(mu_);
      counts_[topic] = *count;
    }
    for (const auto& [topic, n] : topics) {
      {
        std::lock_guard<std::mutex> check(mu_);
        if (stop_) return;
      }
      // Never about partitions the topic does not have (any more): a topic
      // re-created with fewer partitions. librdkafka's calls are
      // thread-safe; this one blocks only this thread.
      int32_t asked = n;
      {
        std::lock_guard<std::mutex> check(mu_);
        if (auto c = counts_.find(topic); c != counts_.end()) asked = std::min(asked, c->second);
      }
      auto wms = consumer_.watermarks(topic, asked, static_cast<int>(timeout_.count()));
      if (!wms) {
        KVS_LOG_DEBUG("refreshing high watermarks: %s", wms.error().message.c_str());
        continue;
      }
      std::vector<int64_t> highs;
      for (const auto& [lo, hi] : *wms) highs.push_back(hi);
      std::lock_guard<std::mutex> store(mu_);
      hw_[topic] = std::move(highs);
    }
    lock.lock();
    wake_.wait_for(lock, interval_, [&] { return stop_ || changed_; });
  }
}

}  // namespace kvs::kafka
