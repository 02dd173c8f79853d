// kvsd's main loop: tables attached or created, every partition of their
// topics consumed and applied, READY (and systemd's READY=1) once each
// partition reached the high watermark seen at start.
#pragma once

#include "config/config.hpp"

namespace kvs::daemon {

inline constexpr int kExitConfig = 78;  // sysexits.h EX_CONFIG

struct RunOptions {
  // Start librdkafka's mock cluster inside kvsd, create the tables' topics
  // there and use it instead of [kafka] bootstrap.servers.
  bool embedded_kafka = false;
};

// Runs until SIGTERM or SIGINT; returns the process exit code.
int run(const config::Config& cfg, const RunOptions& opts);

}  // namespace kvs::daemon
