// librdkafka's own log lines through kvsd's logger: with a journald priority
// prefix and under kvsd's log_level, instead of librdkafka's "%3|..." lines
// on stderr, which journald would file as plain info.
#pragma once

#include <librdkafka/rdkafka.h>

#include "log.hpp"

namespace kvs::kafka {

inline void route_rdkafka_logs(rd_kafka_conf_t* conf) {
  // Called on librdkafka's threads; log::write is one fprintf (stdio locks).
  rd_kafka_conf_set_log_cb(conf,
                           [](const rd_kafka_t*, int level, const char* fac, const char* buf) {
                             using log::Level;
                             const Level l = level <= 3   ? Level::kError
                                             : level == 4 ? Level::kWarning
                                             : level <= 6 ? Level::kInfo
                                                          : Level::kDebug;
                             log::write(l, "librdkafka %s: %s", fac, buf);
                           });
}

}  // namespace kvs::kafka
