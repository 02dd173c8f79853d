// A reader for the handover tests, run inside namespaces (a container's
// view): it opens a table as kvs_open does by default, through
// KVS_SHM_PREFIX, KVS_SOCKET and KVS_HANDOVER from the environment, says
// how that went, then answers commands on stdin, one line each:
//
//   open TABLE        "open 0" or "open <code> <message>"
//   dump              "entry <key> <value>" for every entry, then "end"
//   get KEY           "value <v>", "absent" or "error <code> <message>"
//   pin KEY           begin a guard, keep KEY's value: "pinned" or "error ..."
//   check             "same" if the pinned bytes did not change, else "changed"
//   watch N MS        wait for N changes of the table (a watch), "watched <n>"
//   capacity          "capacity <c>"
#include <chrono>
#include <cstdio>
#include <iostream>
#include <optional>
#include <string>

#include "kvs/kvs.hpp"
#include "support/table_contents.hpp"

namespace {

using namespace std::chrono_literals;

struct Reader {
  std::optional<kvs::Table> table;
  std::optional<kvs::ReadGuard> pin;
  std::string pinned_copy;
  std::string_view pinned;

  void open(const std::string& name) {
    const char* prefix = std::getenv("KVS_SHM_PREFIX");
    auto t = kvs::Table::open(name, kvs::OpenOptions(prefix ? prefix : "kvs."));
    if (!t) {
      std::cout << "open " << static_cast<int>(t.error().code) << " " << t.error().message
                << std::endl;
      return;
    }
    table.emplace(std::move(*t));
    std::cout << "open 0" << std::endl;
  }
  void dump() {
    for (const auto& [k, v] : kvs::test::contents(*table)) {
      std::cout << "entry " << k << " " << v << "\n";
    }
    std::cout << "end" << std::endl;
  }
  void get(const std::string& key) {
    auto v = table->get_copy(key);
    if (v) {
      std::cout << "value " << *v << std::endl;
    } else if (v.error().code == kvs::Errc::kNotFound) {
      std::cout << "absent" << std::endl;
    } else {
      std::cout << "error " << static_cast<int>(v.error().code) << " " << v.error().message
                << std::endl;
    }
  }
  void pin_key(const std::string& key) {
    auto g = table->read();
    if (!g) {
      std::cout << "error " << g.error().message << std::endl;
      return;
    }
    auto v = g->get(key);
    if (!v) {
      std::cout << "error " << v.error().message << std::endl;
      return;
    }
    pinned = *v;
    pinned_copy = std::string(*v);
    pin.emplace(std::move(*g));
    std::cout << "pinned" << std::endl;
  }
  void watch(int n, int ms) {
    auto w = table->watch();
    int seen = 0;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
    std::cout << "watching" << std::endl;
    while (w && seen < n && std::chrono::steady_clock::now() < deadline) {
      auto c = w->next(100ms);
      if (c && *c) ++seen;
    }
    std::cout << "watched " << seen << std::endl;
  }
};

}  // namespace

int main() {
  Reader r;
  std::string cmd;
  while (std::cin >> cmd) {
    std::string arg;
    if (cmd == "open" && std::cin >> arg) {
      r.open(arg);
    } else if (cmd == "dump") {
      r.dump();
    } else if (cmd == "get" && std::cin >> arg) {
      r.get(arg);
    } else if (cmd == "pin" && std::cin >> arg) {
      r.pin_key(arg);
    } else if (cmd == "check") {
      std::cout << (r.pinned == r.pinned_copy ? "same" : "changed") << std::endl;
    } else if (cmd == "watch") {
      int n = 0, ms = 0;
      std::cin >> n >> ms;
      r.watch(n, ms);
    } else if (cmd == "capacity") {
      kvs_table_stats s{};
      kvs_stat(r.table->native(), &s);
      std::cout << "capacity " << s.capacity << std::endl;
    } else {
      std::cout << "unknown " << cmd << std::endl;
    }
  }
  return 0;
}
