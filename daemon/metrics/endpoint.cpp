// kvsd's Prometheus endpoint over civetweb; see endpoint.hpp for the
// bounds and why.
#include "metrics/endpoint.hpp"

#include <civetweb.h>

#include <cstring>

#include "log.hpp"

#ifndef KVS_VERSION_STRING
#define KVS_VERSION_STRING "unknown"
#endif

namespace kvs::daemon::metrics {

namespace {

// civetweb's own messages (a failed bind, a bad request) go to kvsd's log.
int log_message(const mg_connection*, const char* message) {
  KVS_LOG_WARN("metrics endpoint: %s", message);
  return 1;
}

void answer(mg_connection* c, int status, const char* reason, const char* extra_headers,
            const std::string& body, bool with_body) {
  mg_printf(c,
            "HTTP/1.1 %d %s\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
            "Content-Length: %zu\r\nCache-Control: no-store\r\nConnection: close\r\n%s\r\n",
            status, reason, body.size(), extra_headers);
  if (with_body && !body.empty()) mg_write(c, body.data(), body.size());
}

bool loopback(const std::string& listen) {
  return listen.rfind("127.", 0) == 0 || listen.rfind("[::1]:", 0) == 0;
}

}  // namespace

Endpoint::Endpoint(const config::Config& cfg, const Server& server, const SnapshotStatus* snapshots,
                   const Board* board)
    : cfg_(cfg), server_(server), snapshots_(snapshots), board_(board) {
  for (const auto& t : cfg.tables)
    tables_.push_back({t.name, t.topic, t.max_memory_bytes, nullptr});
}

Endpoint::~Endpoint() {
  if (ctx_ != nullptr) {
    mg_stop(ctx_);  // returns once its threads have ended
    mg_exit_library();
  }
  for (auto& t : tables_) kvs_close(t.table);
}

Result<std::unique_ptr<Endpoint>> Endpoint::start(const config::Config& cfg, const Server& server,
                                                  const SnapshotStatus* snapshots,
                                                  const Board* board) {
  if (cfg.metrics_listen.empty()) return std::unique_ptr<Endpoint>();
  std::unique_ptr<Endpoint> e(new Endpoint(cfg, server, snapshots, board));
  const char* options[] = {"listening_ports",
                           cfg.metrics_listen.c_str(),
                           "num_threads",
                           "2",
                           "connection_queue",
                           "16",
                           "listen_backlog",
                           "64",
                           "request_timeout_ms",
                           "5000",
                           "max_request_size",
                           "16384",
                           "enable_keep_alive",
                           "no",
                           nullptr};
  mg_callbacks callbacks{};
  callbacks.log_message = log_message;
  mg_init_library(0);
  e->ctx_ = mg_start(&callbacks, e.get(), options);
  if (e->ctx_ == nullptr) {
    return make_error(Errc::kSystem,
                      "metrics_listen: cannot listen on " + cfg.metrics_listen +
                          " (in use, or not an address of this host; the log line above says "
                          "which): set metrics_listen to another address, or \"\" for none");
  }
  mg_set_request_handler(e->ctx_, "/", &Endpoint::handle, e.get());
  mg_server_port ports[2]{};
  if (mg_get_server_ports(e->ctx_, 2, ports) > 0) e->port_ = ports[0].port;
  KVS_LOG_INFO("serving Prometheus metrics on http://%s/metrics%s", cfg.metrics_listen.c_str(),
               loopback(cfg.metrics_listen)
                   ? " (loopback only)"
                   : ": NOT loopback, every host that reaches this address can read them");
  return e;
}

int Endpoint::handle(mg_connection* c, void* self) {
  const mg_request_info* ri = mg_get_request_info(c);
  const bool head = std::strcmp(ri->request_method, "HEAD") == 0;
  if (std::strcmp(ri->local_uri, "/metrics") != 0) {
    answer(c, 404, "Not Found", "", "kvsd serves /metrics only\n", !head);
    return 404;
  }
  if (!head && std::strcmp(ri->request_method, "GET") != 0) {
    answer(c, 405, "Method Not Allowed", "Allow: GET, HEAD\r\n",
           std::string("/metrics answers GET and HEAD, not ") + ri->request_method + "\n", true);
    return 405;
  }
  const std::string body = static_cast<Endpoint*>(self)->page();
  answer(c, 200, "OK", "", body, !head);
  return 200;
}

std::string Endpoint::page() {
  std::lock_guard lock(mu_);
  for (auto& t : tables_) {
    if (t.table != nullptr) continue;
    // Its own tables, by name: never through a socket.
    kvs_open_options o{cfg_.shm_prefix.c_str(), cfg_.shm_dir.c_str(), nullptr, KVS_HANDOVER_NEVER};
    if (kvs_open(t.name.c_str(), &o, &t.table) != KVS_OK) t.table = nullptr;
  }
  Sources sources{server_.counters(), &server_.write_stats(), board_,
                  snapshots_,         kafka::latest_stats(),  KVS_VERSION_STRING};
  return render(tables_, sources);
}

}  // namespace kvs::daemon::metrics
