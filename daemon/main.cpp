// kvsd: keeps compacted Kafka topics as shared-memory tables on this host.
#include <sys/resource.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>

#include "config/config.hpp"
#include "config/paths.hpp"
#include "kafka/properties.hpp"
#include "kvsd.hpp"

namespace {
// kvsd keeps a descriptor open per reader file of each table (reader_slots
// per table): the soft limit (often 1024) goes up to the hard one.
void raise_fd_limit() {
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &rl);
  }
}

// sysexits.h: EX_USAGE, EX_CONFIG.
constexpr int kExitUsage = 64;
constexpr int kExitConfig = kvs::daemon::kExitConfig;
}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"kvsd: keeps compacted Kafka topics as shared-memory tables on this host"};
  app.set_version_flag("--version", std::string("kvsd ") + KVS_VERSION_STRING);
  std::string config_path = "/etc/kvs/kvsd.toml";
  bool check = false, example = false, keys = false, embedded = false;
  app.add_option("--config", config_path, "Config file")->capture_default_str();
  app.add_flag("--check-config", check, "Validate the config file and exit");
  app.add_flag("--print-example-config", example, "Print the commented example config");
  app.add_flag("--help-config", keys, "Describe every config key");
  app.add_flag("--embedded-kafka", embedded,
               "Run librdkafka's mock cluster inside kvsd (a first try; data is not kept)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : kExitUsage;
  }
  if (example) {
    std::fputs(kvs::config::example_toml().c_str(), stdout);
    return 0;
  }
  if (keys) {
    std::fputs(kvs::config::describe_keys().c_str(), stdout);
    return 0;
  }
  auto cfg = kvs::config::load_file(config_path);
  if (!cfg) {
    std::fprintf(stderr, "<3>kvsd: %s\n", cfg.error().message.c_str());
    return kExitConfig;
  }
  auto warnings = kvs::kafka::check_properties(*cfg);
  if (!warnings) {
    std::fprintf(stderr, "<3>kvsd: %s\n", warnings.error().message.c_str());
    return kExitConfig;
  }
  for (const auto& w : *warnings) std::fprintf(stderr, "<4>kvsd: %s\n", w.c_str());
  if (auto paths = kvs::config::check_paths(*cfg); !paths) {
    std::fprintf(stderr, "<3>kvsd: %s\n", paths.error().message.c_str());
    return kExitConfig;
  }
  if (check) {
    std::printf("%s: OK (%zu table%s)\n", config_path.c_str(), cfg->tables.size(),
                cfg->tables.size() == 1 ? "" : "s");
    return 0;
  }
  raise_fd_limit();
  return kvs::daemon::run(*cfg, kvs::daemon::RunOptions{embedded});
}
