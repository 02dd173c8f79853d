// kvsctl: reads kvs tables and writes through kvsd, from the shell.
//
// It finds the socket and the tables in kvsd's config (--config, default
// /etc/kvs/kvsd.toml; a missing default file means kvsd's defaults) or from
// flags, and needs no table name when the config has one table. Reads go
// through libkvs (shared memory), writes through kvsd's socket.
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <iterator>
#include <optional>
#include <string>
#include <thread>

#include "config/config.hpp"
#include "format/layout.hpp"
#include "kvs/kvs.h"
#include "kvsctl.hpp"

namespace {

using namespace kvs::kvsctl;

std::string from_hex(const std::string& h, bool* ok) {
  std::string out;
  *ok = h.size() % 2 == 0;
  for (size_t i = 0; *ok && i < h.size(); i += 2) {
    const std::string byte = h.substr(i, 2);
    if (byte.find_first_not_of("0123456789abcdefABCDEF") != std::string::npos) *ok = false;
    if (*ok) out.push_back(static_cast<char>(std::stoi(byte, nullptr, 16)));
  }
  return out;
}

// TSV: backslash escapes for \\ \t \n \r and \xHH for other bytes outside
// printable ASCII, so that any key and value fits one line and reads back.
std::string tsv_escape(std::string_view s) {
  std::string o;
  for (unsigned char c : s) {
    if (c == '\\') {
      o += "\\\\";
    } else if (c == '\t') {
      o += "\\t";
    } else if (c == '\n') {
      o += "\\n";
    } else if (c == '\r') {
      o += "\\r";
    } else if (c < 0x20 || c >= 0x7f) {
      char b[5];
      std::snprintf(b, sizeof b, "\\x%02x", c);
      o += b;
    } else {
      o += static_cast<char>(c);
    }
  }
  return o;
}

int cmd_get(const Target& t, const std::string& key) {
  kvs_table* tb = nullptr;
  if (int rc = open_table(t, &tb); rc != KVS_OK) return rc;
  kvs_txn* x = nullptr;
  int rc = kvs_read_begin(tb, &x);
  if (rc == KVS_OK) {
    const void* v = nullptr;
    size_t n = 0;
    rc = kvs_get(x, key.data(), key.size(), &v, &n);
    if (rc == KVS_OK) std::fwrite(v, 1, n, stdout);
    kvs_read_end(x);
  }
  kvs_close(tb);
  if (rc == KVS_ENOTFOUND) {
    std::fprintf(stderr, "kvsctl: %s: key not found\n", t.table.c_str());
    return kExitNotFound;
  }
  return rc == KVS_OK ? 0 : fail(rc, "get");
}

int cmd_write(const Target& t, const std::string& key, const std::string* value, bool visible,
              uint32_t timeout_ms) {
  kvs_client* c = nullptr;
  if (int rc = kvs_connect(t.socket.c_str(), &c); rc != KVS_OK) return fail(rc, "connecting");
  kvs_write_options o{timeout_ms, visible ? 1 : 0};
  kvs_token tok{};
  const int rc = value ? kvs_put(c, t.table.c_str(), key.data(), key.size(), value->data(),
                                 value->size(), &o, &tok)
                       : kvs_erase(c, t.table.c_str(), key.data(), key.size(), &o, &tok);
  kvs_disconnect(c);
  if (rc != KVS_OK) return fail(rc, value ? "put" : "del");
  // The token, to wait for elsewhere: kvsctl wait PARTITION OFFSET.
  std::printf("%d %lld\n", tok.partition, static_cast<long long>(tok.offset));
  return 0;
}

int cmd_dump(const Target& t, const std::string& format) {
  kvs_table* tb = nullptr;
  if (int rc = open_table(t, &tb); rc != KVS_OK) return rc;
  kvs_txn* x = nullptr;
  int rc = kvs_read_begin(tb, &x);
  if (rc == KVS_OK) {
    const bool json = format == "json";
    auto fn = [](void* ctx, const void* k, size_t kl, const void* v, size_t vl) -> int {
      const bool j = *static_cast<bool*>(ctx);
      const std::string_view key(static_cast<const char*>(k), kl);
      const std::string_view val(static_cast<const char*>(v), vl);
      const std::string line =
          j ? "{\"key\":" + json_escape(key) + ",\"value\":" + json_escape(val) + "}\n"
            : tsv_escape(key) + "\t" + tsv_escape(val) + "\n";
      return std::fwrite(line.data(), 1, line.size(), stdout) == line.size() ? 0 : 1;
    };
    bool j = json;
    rc = kvs_for_each(x, fn, &j);
    kvs_read_end(x);
  }
  kvs_close(tb);
  if (rc == 1) return fail(KVS_ESYS, "writing to stdout");
  return rc == KVS_OK ? 0 : fail(rc, "dump");
}

volatile sig_atomic_t g_interrupted = 0;
void on_interrupt(int) { g_interrupted = 1; }

// The key's current value, under a short guard ("": none).
std::optional<std::string> current_value(kvs_table* tb, const void* key, size_t key_len) {
  kvs_txn* x = nullptr;
  if (kvs_read_begin(tb, &x) != KVS_OK) return std::nullopt;
  const void* v = nullptr;
  size_t vl = 0;
  std::optional<std::string> out;
  if (kvs_get(x, key, key_len, &v, &vl) == KVS_OK) out.emplace(static_cast<const char*>(v), vl);
  kvs_read_end(x);
  return out;
}

std::string change_line(const kvs_change& c, const std::optional<std::string>& value, bool json) {
  const char* kind = c.kind == KVS_CHANGE_PUT     ? "put"
                     : c.kind == KVS_CHANGE_ERASE ? "erase"
                                                  : "lost";
  const std::string_view key(static_cast<const char*>(c.key), c.key_len);
  if (c.kind == KVS_CHANGE_LOST) {
    return json ? "{\"kind\":\"lost\"}\n"
                : "lost\t-\t-\t(changes were lost: the watch fell behind the change log)\n";
  }
  const std::string token = std::to_string(c.partition) + ":" + std::to_string(c.offset);
  if (json) {
    return "{\"kind\":\"" + std::string(kind) + "\",\"partition\":" + std::to_string(c.partition) +
           ",\"offset\":" + std::to_string(c.offset) +
           ",\"timestamp_ms\":" + std::to_string(c.timestamp_ms) + ",\"key\":" + json_escape(key) +
           ",\"value\":" + (value ? json_escape(*value) : std::string("null")) + "}\n";
  }
  return std::string(kind) + "\t" + token + "\t" + tsv_escape(key) + "\t" +
         (value ? tsv_escape(*value) : std::string("-")) + "\n";
}

// Prints the changes that pass the filter as they are applied, with the
// key's value as the table holds it when printed, until Ctrl-C (or
// max_changes lines).
int cmd_watch(const Target& t, int filter, const std::string& key, const std::string& format,
              uint64_t max_changes) {
  kvs_table* tb = nullptr;
  if (int rc = open_table(t, &tb); rc != KVS_OK) return rc;
  kvs_watch* w = nullptr;
  if (int rc = kvs_watch_open(tb, filter, key.data(), key.size(), &w); rc != KVS_OK) {
    kvs_close(tb);
    return fail(rc, "watch");
  }
  struct sigaction sa {};
  sa.sa_handler = on_interrupt;  // no SA_RESTART: the futex sleep ends at once
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  int rc = KVS_OK;
  for (uint64_t n = 0; !g_interrupted && (max_changes == 0 || n < max_changes);) {
    kvs_change c{};
    rc = kvs_watch_next(w, &c, 1000);
    if (rc == KVS_ETIMEDOUT) continue;
    if (rc != KVS_OK) break;
    std::optional<std::string> value;
    if (c.kind == KVS_CHANGE_PUT) value = current_value(tb, c.key, c.key_len);
    const std::string line = change_line(c, value, format == "json");
    if (std::fwrite(line.data(), 1, line.size(), stdout) != line.size() || std::fflush(stdout)) {
      rc = KVS_ESYS;
      break;
    }
    ++n;
  }
  kvs_watch_close(w);
  kvs_close(tb);
  if (rc == KVS_ETIMEDOUT) rc = KVS_OK;
  return rc == KVS_OK ? 0 : fail(rc, "watch");
}

int cmd_wait_ready(const Target& t, int timeout_ms) {
  using clock = std::chrono::steady_clock;
  const auto deadline = clock::now() + std::chrono::milliseconds(timeout_ms);
  const bool tty = ::isatty(STDERR_FILENO) == 1;
  kvs_table* tb = nullptr;
  // kvsd may not have created the table yet.
  for (;;) {
    kvs_open_options o{t.shm_prefix.c_str(), t.shm_dir.empty() ? nullptr : t.shm_dir.c_str(),
                       t.socket.empty() ? nullptr : t.socket.c_str(), KVS_HANDOVER_AUTO};
    const int rc = kvs_open(t.table.c_str(), &o, &tb);
    if (rc == KVS_OK) break;
    if (rc != KVS_ENOTABLE || (timeout_ms >= 0 && clock::now() >= deadline)) {
      return fail(rc, "opening table " + t.table);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  auto last_line = clock::now() - std::chrono::seconds(10);
  auto next_probe = clock::now();
  bool kvsd_up = true;
  // Without kvsd the table only waits: say so, instead of a frozen 0%.
  const std::string down = "kvsd is not running (its socket " + t.socket + " does not answer)";
  int rc = KVS_OK;
  for (;;) {
    if (kvs_state(tb) == KVS_STATE_READY) break;
    if (clock::now() >= next_probe) {
      kvsd_up = kvsd_answers(t);
      next_probe = clock::now() + std::chrono::seconds(1);
    }
    if (timeout_ms >= 0 && clock::now() >= deadline) {
      rc = KVS_ETIMEDOUT;
      break;
    }
    int64_t done = 0, total = 0;
    const uint32_t parts = kvs_partition_count(tb);
    for (uint32_t p = 0; p < parts; ++p) {
      int64_t next = 0, hw = 0;
      (void)kvs_partition_offsets(tb, p, &next, &hw);
      done += std::min(next, hw);
      total += hw;
    }
    const int pct = total > 0 ? static_cast<int>(100 * done / total) : 0;
    if (tty) {
      const int w = 30, fill = pct * w / 100;
      std::fprintf(stderr, "\r%s [%s%s] %3d%% %lld/%lld records%s\033[K", t.table.c_str(),
                   std::string(fill, '#').c_str(), std::string(w - fill, ' ').c_str(), pct,
                   static_cast<long long>(done), static_cast<long long>(total),
                   kvsd_up ? "" : "; kvsd is not running");
    } else if (clock::now() - last_line >= std::chrono::seconds(1)) {
      if (kvsd_up) {
        std::fprintf(stderr, "%s: BOOTSTRAPPING %d%% (%lld of %lld records)\n", t.table.c_str(),
                     pct, static_cast<long long>(done), static_cast<long long>(total));
      } else {
        std::fprintf(stderr, "%s: not READY, and %s; waiting for it\n", t.table.c_str(),
                     down.c_str());
      }
      last_line = clock::now();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(tty ? 100 : 50));
  }
  if (tty) std::fprintf(stderr, "\n");
  kvs_close(tb);
  if (rc != KVS_OK) {
    std::fprintf(stderr, "kvsctl: %s not READY after %d ms%s%s\n", t.table.c_str(), timeout_ms,
                 kvsd_up ? "" : ": ", kvsd_up ? "" : down.c_str());
    return exit_code_of(rc);
  }
  std::printf("%s: READY\n", t.table.c_str());
  // A segment kvsd left READY stays READY: readers read it as it was.
  if (!kvsd_answers(t)) {
    std::fprintf(stderr, "%s: %s: the table is as kvsd left it and is not kept current\n",
                 t.table.c_str(), down.c_str());
  }
  return 0;
}

int cmd_wait(const Target& t, int32_t partition, int64_t offset, int timeout_ms) {
  kvs_table* tb = nullptr;
  if (int rc = open_table(t, &tb); rc != KVS_OK) return rc;
  kvs_token tok{partition, offset};
  const int rc = kvs_wait(tb, &tok, timeout_ms);
  kvs_close(tb);
  return rc == KVS_OK ? 0 : fail(rc, "wait");
}

}  // namespace

namespace {

// What the command line said.
struct Args {
  std::string config_path = "/etc/kvs/kvsd.toml", socket, prefix, shm_dir, table;
  CLI::Option* config_opt = nullptr;
  bool hex = false;
  std::string key, value;
  bool visible = false;
  uint32_t write_timeout_ms = 0;
  std::string format = "tsv";
  bool json = false;
  int timeout_ms = -1;
  int32_t partition = 0;
  int64_t offset = 0;
  std::string out;
  std::string watch_key, watch_prefix;
  uint64_t max_changes = 0;
  int verify_timeout_ms = 60000;
  CLI::App *get = nullptr, *put = nullptr, *del = nullptr, *dump = nullptr, *stats = nullptr,
           *ready = nullptr, *wait = nullptr, *snapshot = nullptr, *watch = nullptr,
           *verify = nullptr;
};

void add_global_options(CLI::App& app, Args& a) {
  app.require_subcommand(1);
  app.fallthrough();  // --table, --hex, ... after the subcommand too
  app.footer(
      "Exit codes: 0 success; 1 key not found; 64 usage; 65 bad data (too large, no such "
      "table at kvsd); 69 kvsd or the table unavailable; 75 timed out (retry); 77 permission "
      "denied; 78 bad config; 70 other.");
  a.config_opt =
      app.add_option("--config", a.config_path, "kvsd's config file")->capture_default_str();
  app.add_option("--socket", a.socket, "kvsd's socket (default: from the config)");
  app.add_option("--shm-prefix", a.prefix, "shared-memory prefix (default: from the config)");
  app.add_option("--shm-dir", a.shm_dir,
                 "directory of the segments (default: the config's shm_dir, else KVS_SHM_DIR, "
                 "else /dev/shm)");
  app.add_option("-t,--table", a.table, "table (default: the config's only table)");
  app.add_flag("--hex", a.hex, "KEY and VALUE arguments are hex-encoded bytes");
}

// In the order --help lists them: get, put, del, dump; then stats, waits,
// snapshot and watch.
void add_read_write_commands(CLI::App& app, Args& a) {
  a.get = app.add_subcommand("get", "Print a key's value (raw bytes) from shared memory");
  a.get->add_option("KEY", a.key)->required();
  a.put = app.add_subcommand("put", "Write KEY=VALUE through kvsd; prints the token");
  a.put->add_option("KEY", a.key)->required();
  a.put->add_option("VALUE", a.value, "the value; - reads it from stdin")->required();
  a.del = app.add_subcommand("del", "Delete KEY through kvsd; prints the token");
  a.del->add_option("KEY", a.key)->required();
  for (auto* w : {a.put, a.del}) {
    w->add_flag("--visible", a.visible, "return once this host's table shows the write");
    w->add_option("--timeout-ms", a.write_timeout_ms, "kvsd's answer deadline (0: its default)");
  }
  a.dump = app.add_subcommand("dump", "Print every entry, one per line");
  a.dump->add_option("--format", a.format, "tsv (backslash escapes) or json (JSON lines)")
      ->check(CLI::IsMember({"tsv", "json"}))
      ->capture_default_str();
}

void add_observe_commands(CLI::App& app, Args& a) {
  a.stats = app.add_subcommand("stats", "Table and kvsd statistics, lag per partition");
  a.stats->add_flag("--json", a.json, "one JSON object");
  a.ready = app.add_subcommand("wait-ready", "Wait until the table is READY");
  a.ready->add_option("--timeout-ms", a.timeout_ms, "give up after this long (-1: never)")
      ->capture_default_str();
  a.wait = app.add_subcommand("wait", "Wait until the table applied a token (PARTITION OFFSET)");
  a.wait->add_option("PARTITION", a.partition)->required();
  a.wait->add_option("OFFSET", a.offset)->required();
  a.wait->add_option("--timeout-ms", a.timeout_ms, "give up after this long (-1: never)")
      ->capture_default_str();
  a.snapshot = app.add_subcommand(
      "snapshot",
      "Write a snapshot of the live table to a file (kvsd's seed_from on another host)");
  a.snapshot->add_option("--out", a.out, "the file (written beside it, then renamed)")->required();
  a.watch = app.add_subcommand(
      "watch",
      "Print changes as kvsd applies them (kind, partition:offset, key, value) until Ctrl-C");
  a.watch->add_option("--key", a.watch_key, "only this key");
  a.watch->add_option("--prefix", a.watch_prefix, "only keys that start with this");
  a.watch->add_option("--format", a.format, "tsv (backslash escapes) or json (JSON lines)")
      ->check(CLI::IsMember({"tsv", "json"}))
      ->capture_default_str();
  a.watch->add_option("--max-changes", a.max_changes, "stop after this many lines (0: never)");
  a.verify = app.add_subcommand(
      "verify",
      "Compare the table with its topic, read from Kafka up to the offsets the table applied");
  a.verify->add_option("--timeout-ms", a.verify_timeout_ms, "give up reading the topic after this")
      ->capture_default_str();
}

// Socket, prefix and table: flags, else the config, else kvsd's defaults.
// An exit code if they cannot be settled.
std::optional<int> resolve_target(const Args& a, Target* t, kvs::config::Config* config) {
  kvs::config::Config& cfg = *config;
  const bool explicit_config = a.config_opt->count() > 0;
  if (explicit_config || std::filesystem::exists(a.config_path)) {
    auto c = kvs::config::load_file(a.config_path);
    if (!c) {
      std::fprintf(stderr, "kvsctl: %s\n", c.error().message.c_str());
      return kExitConfig;
    }
    cfg = std::move(*c);
  }
  t->socket = a.socket.empty() ? cfg.socket_path : a.socket;
  t->shm_prefix = a.prefix.empty() ? cfg.shm_prefix : a.prefix;
  // The config's directory only when a config was read: else KVS_SHM_DIR.
  if (!a.shm_dir.empty()) {
    t->shm_dir = a.shm_dir;
  } else if (explicit_config || std::filesystem::exists(a.config_path)) {
    t->shm_dir = cfg.shm_dir;
  }
  if (!a.table.empty()) {
    t->table = a.table;
  } else if (cfg.tables.size() == 1) {
    t->table = cfg.tables[0].name;
  } else {
    std::string names;
    for (const auto& tc : cfg.tables) names += (names.empty() ? "" : ", ") + tc.name;
    std::fprintf(stderr, "kvsctl: %s; name one with --table\n",
                 cfg.tables.empty() ? "no table in the config"
                                    : ("the config has several tables (" + names + ")").c_str());
    return kExitUsage;
  }
  for (const auto& tc : cfg.tables) {
    if (tc.name == t->table) t->topic = tc.topic;
  }
  return std::nullopt;
}

// --hex and a value read from stdin; an exit code on bad input.
std::optional<int> decode_inputs(Args& a) {
  if (a.hex) {
    bool ok = true;
    a.key = from_hex(a.key, &ok);
    if (ok && a.put->parsed() && a.value != "-") a.value = from_hex(a.value, &ok);
    if (!ok) {
      std::fprintf(stderr, "kvsctl: --hex: KEY and VALUE must be pairs of hex digits\n");
      return kExitUsage;
    }
  }
  if (a.put->parsed() && a.value == "-") {
    a.value.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  }
  return std::nullopt;
}

int run_watch(Args& a, const Target& t) {
  if (!a.watch_key.empty() && !a.watch_prefix.empty()) {
    std::fprintf(stderr, "kvsctl: watch: --key and --prefix exclude each other\n");
    return kExitUsage;
  }
  if (a.hex) {
    bool ok = true;
    a.watch_key = from_hex(a.watch_key, &ok);
    if (ok) a.watch_prefix = from_hex(a.watch_prefix, &ok);
    if (!ok) {
      std::fprintf(stderr, "kvsctl: --hex: --key and --prefix must be pairs of hex digits\n");
      return kExitUsage;
    }
  }
  const int filter = !a.watch_key.empty()      ? KVS_WATCH_KEY
                     : !a.watch_prefix.empty() ? KVS_WATCH_PREFIX
                                               : KVS_WATCH_ALL;
  return cmd_watch(t, filter, a.watch_key.empty() ? a.watch_prefix : a.watch_key, a.format,
                   a.max_changes);
}

int run(Args& a, const Target& t, const kvs::config::Config& cfg) {
  if (a.get->parsed()) return cmd_get(t, a.key);
  if (a.put->parsed()) return cmd_write(t, a.key, &a.value, a.visible, a.write_timeout_ms);
  if (a.del->parsed()) return cmd_write(t, a.key, nullptr, a.visible, a.write_timeout_ms);
  if (a.dump->parsed()) return cmd_dump(t, a.format);
  if (a.stats->parsed()) return cmd_stats(t, a.json);
  if (a.ready->parsed()) return cmd_wait_ready(t, a.timeout_ms);
  if (a.wait->parsed()) return cmd_wait(t, a.partition, a.offset, a.timeout_ms);
  if (a.snapshot->parsed()) return cmd_snapshot(t, a.out);
  if (a.watch->parsed()) return run_watch(a, t);
  if (a.verify->parsed()) return cmd_verify(t, cfg, a.verify_timeout_ms);
  return kExitUsage;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"kvsctl: read kvs tables and write through kvsd"};
  app.set_version_flag("--version", std::string("kvsctl ") + KVS_VERSION_STRING);
  Args a;
  add_global_options(app, a);
  add_read_write_commands(app, a);
  add_observe_commands(app, a);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : kExitUsage;
  }
  Target t;
  kvs::config::Config cfg;
  if (auto rc = resolve_target(a, &t, &cfg)) return *rc;
  if (auto rc = decode_inputs(a)) return *rc;
  return run(a, t, cfg);
}
