#include "snapshots.hpp"

#include <sched.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "config/paths.hpp"
#include "format/layout.hpp"
#include "log.hpp"
#include "writer/snapshot.hpp"

namespace kvs::daemon {

namespace fs = std::filesystem;

namespace {

constexpr const char* kSuffix = ".snapshot";
std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
      continue;
    }
    out += c;
  }
  return out + "\"";
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

void lower_priority() {
  sched_param none{};
  if (::sched_setscheduler(0, SCHED_IDLE, &none) != 0) {
    KVS_LOG_DEBUG("snapshots: SCHED_IDLE: %s", std::strerror(errno));
  }
}

std::string snapshot_dir(const config::Config& cfg, const std::string& table) {
  return (fs::path(cfg.state_dir) / (cfg.shm_prefix + table)).string();
}

std::vector<std::string> list_snapshots(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (ends_with(name, kSuffix) && it->is_regular_file(ec)) out.push_back(it->path().string());
  }
  // The names are zero-padded creation times: the newest sorts last.
  std::sort(out.rbegin(), out.rend());
  return out;
}

size_t prune_snapshots(const std::string& dir, const std::string& table, const std::string& keep,
                       uint64_t now_unix_ns) {
  const uint64_t latest_ok = now_unix_ns + kSnapshotClockSlack_s * 1000000000;
  std::string fallback;  // the newest other one that is not from the future
  uint64_t fallback_ns = 0;
  std::vector<std::pair<std::string, std::string>> doomed;  // path, why
  for (const auto& path : list_snapshots(dir)) {
    if (path == keep) continue;
    auto head = read_snapshot_header(path, table);
    if (!head) {
      doomed.emplace_back(path, head.error().message);
    } else if (head->created_unix_ns > latest_ok) {
      doomed.emplace_back(path, "created " + log::utc_time(head->created_unix_ns) +
                                    ", after now: a clock that ran ahead");
    } else if (fallback.empty() || head->created_unix_ns > fallback_ns) {
      if (!fallback.empty()) doomed.emplace_back(fallback, "");
      fallback = path;
      fallback_ns = head->created_unix_ns;
    } else {
      doomed.emplace_back(path, "");
    }
  }
  size_t n = 0;
  for (const auto& [path, why] : doomed) {
    std::error_code ec;
    if (!fs::remove(path, ec)) continue;
    ++n;
    if (!why.empty())
      KVS_LOG_WARN("table %s: removed snapshot %s: %s", table.c_str(), path.c_str(), why.c_str());
  }
  return n;
}

size_t sweep_temporaries(const std::string& dir) {
  size_t n = 0;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->path().filename().string().find(".tmp.") == std::string::npos) continue;
    std::error_code rm;
    if (fs::remove(it->path(), rm)) ++n;
  }
  return n;
}

void SnapshotStatus::set(const std::string& table, std::string json, const SnapshotFigures* f) {
  std::lock_guard lock(mu_);
  by_table_[table] = std::move(json);
  SnapshotFigures& kept = figures_[table];
  if (f == nullptr) {
    ++kept.failures;
  } else {
    kept = SnapshotFigures{f->created_unix_ns, f->entries, f->file_bytes, f->duration_s,
                           kept.failures};
  }
}

SnapshotFigures SnapshotStatus::figures(const std::string& table) const {
  std::lock_guard lock(mu_);
  auto it = figures_.find(table);
  return it == figures_.end() ? SnapshotFigures{} : it->second;
}

std::string SnapshotStatus::json(const std::string& table) const {
  std::lock_guard lock(mu_);
  auto it = by_table_.find(table);
  return it == by_table_.end() ? "null" : it->second;
}

Snapshotter::Snapshotter(const config::Config& cfg, SnapshotStatus& status, bool enabled)
    : cfg_(cfg), status_(status), enabled_(enabled && cfg.snapshot_interval_s > 0) {
  for (const auto& t : cfg.tables) {
    targets_.push_back(Target{t.name, snapshot_dir(cfg, t.name), nullptr});
  }
}

Snapshotter::~Snapshotter() { stop(); }

void Snapshotter::start() {
  if (!enabled_ || thread_.joinable()) return;
  thread_ = std::thread([this] { loop(); });
}

void Snapshotter::stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void Snapshotter::write_all() {
  stop();
  if (!enabled_) return;
  for (auto& t : targets_) write_one(t);
}

void Snapshotter::loop() {
  lower_priority();
  const auto interval = std::chrono::seconds(cfg_.snapshot_interval_s);
  auto next = std::chrono::steady_clock::now() + interval;
  for (;;) {
    {
      std::unique_lock lock(mu_);
      if (cv_.wait_until(lock, next, [&] { return stopping_; })) return;
    }
    for (auto& t : targets_) write_one(t);
    next = std::chrono::steady_clock::now() + interval;
  }
}

void Snapshotter::write_one(Target& t) {
  if (!t.table) {
    auto opened = Table::open(t.name, OpenOptions{cfg_.shm_prefix, cfg_.shm_dir});
    if (!opened) return;  // not created yet
    t.table = std::make_unique<Table>(std::move(*opened));
  }
  // A table still catching up is not worth a snapshot: the last one, or
  // the topic, serve a cold start as well.
  if (t.table->state() != State::kReady) return;
  const uint64_t now_ns = format::now_unix_ns();
  auto failed = [&](const std::string& why) {
    const auto kept = list_snapshots(t.dir);
    KVS_LOG_ERROR("table %s: snapshot failed: %s; %s", t.name.c_str(), why.c_str(),
                  kept.empty() ? "there is no snapshot to start from"
                               : ("the newest good one stays: " + kept.front()).c_str());
    status_.set(t.name,
                "{\"error\":" + json_string(why) + ",\"failed_unix_ns\":" + std::to_string(now_ns) +
                    ",\"newest\":" + (kept.empty() ? "null" : json_string(kept.front())) + "}",
                nullptr);
  };
  // Only kvsd may write where its snapshots are: what is there decides a
  // table's contents after a cold start (config/paths.hpp).
  for (const std::string& dir : {cfg_.state_dir, t.dir}) {
    if (::mkdir(dir.c_str(), 0750) != 0 && errno != EEXIST) {
      return failed("cannot create " + dir + ": " + std::strerror(errno));
    }
  }
  struct stat st {};
  if (::stat(cfg_.state_dir.c_str(), &st) != 0) {
    return failed(cfg_.state_dir + ": " + std::strerror(errno));
  }
  if (const std::string w = config::why_untrusted(st); !w.empty()) {
    return failed("state_dir " + cfg_.state_dir + " " + w);
  }
  if (const std::string w = config::why_untrusted_dir(t.dir); !w.empty()) return failed(w);
  char name[64];
  std::snprintf(name, sizeof name, "/%020" PRIu64 "%s", now_ns, kSuffix);
  const std::string path = t.dir + name;
  auto info = t.table->write_snapshot(path);
  if (!info) return failed(info.error().message);
  std::string offsets;
  if (auto head = read_snapshot_header(path, t.name)) {
    for (const auto& p : head->partitions) {
      offsets += (offsets.empty() ? "" : ",") + std::to_string(p.next_offset);
    }
  } else {
    return failed("the snapshot just written does not read back: " + head.error().message);
  }
  prune_snapshots(t.dir, t.name, path, now_ns);
  const double ms = static_cast<double>(info->duration_ns) / 1e6;
  KVS_LOG_INFO("table %s: snapshot %s: %" PRIu64 " entries, %.1f MiB, written in %.0f ms",
               t.name.c_str(), path.c_str(), info->entries,
               static_cast<double>(info->file_bytes) / (1 << 20), ms);
  char figures[256];
  std::snprintf(figures, sizeof figures,
                ",\"created_unix_ns\":%" PRIu64 ",\"entries\":%" PRIu64 ",\"file_bytes\":%" PRIu64
                ",\"duration_ms\":%.1f",
                info->created_unix_ns, info->entries, info->file_bytes, ms);
  const SnapshotFigures f{info->created_unix_ns, info->entries, info->file_bytes, ms / 1e3, 0};
  status_.set(t.name,
              "{\"path\":" + json_string(path) + figures + ",\"next_offsets\":[" + offsets + "]}",
              &f);
}

}  // namespace kvs::daemon
