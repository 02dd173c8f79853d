// The librdkafka properties kvsd sets whatever [kafka] says (its contract
// depends on them), and the check of [kafka] that --check-config and the
// start make: every property through librdkafka's own validation, and a
// warning for each one kvsd overrides.
#pragma once

#include <string>
#include <vector>

#include "config/config.hpp"
#include "kvs/result.hpp"

namespace kvs::kafka {

struct Override {
  std::string key, value;
  const char* why;
};

// The consumer's: read_committed, positions in the segment, never skip.
const std::vector<Override>& consumer_overrides();
// The producer's: durable (acks=all), never duplicated (idempotence),
// partitioned as Java's default partitioner, timed out as write_timeout_ms.
std::vector<Override> producer_overrides(uint32_t write_timeout_ms);

// Sets every [kafka] property on a consumer's and a producer's librdkafka
// configuration. Errors: kInvalidArgument naming file:line:key and
// librdkafka's reason. Returns one warning per property kvsd overrides with
// another value.
Result<std::vector<std::string>> check_properties(const config::Config& c);

}  // namespace kvs::kafka
