#include "kafka/shutdown.hpp"

#include <atomic>
#include <future>
#include <memory>
#include <thread>

#include "log.hpp"

namespace kvs::kafka {
namespace {
std::atomic<int> g_unfinished{0};
}  // namespace

bool destroy_within(rd_kafka_t* rk, std::chrono::milliseconds limit, const char* what,
                    std::function<void()> before) {
  if (rk == nullptr) return true;
  auto done = std::make_shared<std::promise<void>>();
  std::future<void> ended = done->get_future();
  std::thread([rk, done, before = std::move(before)] {
    if (before) before();
    rd_kafka_destroy(rk);
    done->set_value();
  }).detach();
  if (ended.wait_for(limit) == std::future_status::ready) return true;
  g_unfinished.fetch_add(1);
  KVS_LOG_ERROR(
      "librdkafka's %s did not stop within %lld s (a known librdkafka hang); kvsd "
      "exits without it",
      what,
      static_cast<long long>(std::chrono::duration_cast<std::chrono::seconds>(limit).count()));
  return false;
}

int unfinished_destroys() { return g_unfinished.load(); }

}  // namespace kvs::kafka
