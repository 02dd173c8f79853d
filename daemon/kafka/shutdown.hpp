// Destroying librdkafka handles within a time limit. librdkafka 2.0.2 can
// hang for ever in rd_kafka_destroy (seen after requests about partitions
// of a topic that was deleted; confluentinc/librdkafka#3007, #3470): kvsd's
// exit must not. The destroy runs on a thread of its own; when it does not
// end in time, the thread is left running and counted, so that kvsd exits
// without waiting for it (its segments are consistent at any instruction).
#pragma once

#include <librdkafka/rdkafka.h>

#include <chrono>
#include <functional>

namespace kvs::kafka {

// How long kvsd waits for each librdkafka handle at its exit.
constexpr std::chrono::seconds kDestroyLimit{10};

// Runs `before` (queue destroys, consumer close) and rd_kafka_destroy(rk),
// waiting at most `limit`. False (logged, and counted in
// unfinished_destroys()) if they did not end in time.
bool destroy_within(rd_kafka_t* rk, std::chrono::milliseconds limit, const char* what,
                    std::function<void()> before = {});
// Handles whose destroy did not end in time, in this process.
int unfinished_destroys();

}  // namespace kvs::kafka
