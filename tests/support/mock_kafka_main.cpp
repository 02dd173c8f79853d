// Runs librdkafka's mock cluster in a process of its own, for tests.
//   kvs_mock_kafka [--brokers N] [--ports P1,P2,...] [--topic NAME:PARTITIONS]...
// --ports: the brokers listen on these ports (those of a cluster that has
// exited: to its clients, the same brokers came back with a new log, as a
// cluster whose topics were deleted and re-created).
// Prints "bootstrap <servers>", then obeys one command a line on stdin,
// answering "ok" or "error <text>":
//   create TOPIC PARTITIONS | down BROKER | up BROKER | errors APIKEY COUNT CODE
// Exits at "quit" or when stdin closes (the test that started it is gone).
#include <dlfcn.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdio>
#include <cstring>
#include <deque>
#include <iostream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "kafka/embedded_kafka.hpp"

namespace {
std::deque<uint16_t> g_ports;  // --ports not used yet
}  // namespace

// librdkafka's mock brokers bind 127.0.0.1 port 0; with --ports, each takes
// the next port given (this executable's bind() comes before libc's).
extern "C" int bind(int fd, const sockaddr* addr, socklen_t len) {
  using Bind = int (*)(int, const sockaddr*, socklen_t);
  static const auto real = reinterpret_cast<Bind>(::dlsym(RTLD_NEXT, "bind"));
  if (g_ports.empty() || addr->sa_family != AF_INET || len < sizeof(sockaddr_in) ||
      reinterpret_cast<const sockaddr_in*>(addr)->sin_port != 0) {
    return real(fd, addr, len);
  }
  sockaddr_in at;
  std::memcpy(&at, addr, sizeof at);
  at.sin_port = htons(g_ports.front());
  g_ports.pop_front();
  const int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  return real(fd, reinterpret_cast<const sockaddr*>(&at), sizeof at);
}

int main(int argc, char** argv) {
  int brokers = 3;
  std::vector<std::pair<std::string, int>> topics;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--brokers" && i + 1 < argc) {
      brokers = std::stoi(argv[++i]);
    } else if (a == "--ports" && i + 1 < argc) {
      std::istringstream list(argv[++i]);
      for (std::string port; std::getline(list, port, ',');)
        g_ports.push_back(static_cast<uint16_t>(std::stoi(port)));
    } else if (a == "--topic" && i + 1 < argc) {
      const std::string t = argv[++i];
      const size_t colon = t.rfind(':');
      topics.emplace_back(t.substr(0, colon),
                          colon == std::string::npos ? 1 : std::stoi(t.substr(colon + 1)));
    } else {
      std::fprintf(stderr,
                   "usage: kvs_mock_kafka [--brokers N] [--ports P1,...] [--topic "
                   "NAME:PARTITIONS]...\n");
      return 2;
    }
  }
  auto k = kvs::kafka::EmbeddedKafka::start(brokers);
  if (!k) {
    std::fprintf(stderr, "kvs_mock_kafka: %s\n", k.error().message.c_str());
    return 1;
  }
  for (const auto& [name, parts] : topics) {
    if (auto ok = (*k)->create_topic(name, parts); !ok) {
      std::fprintf(stderr, "kvs_mock_kafka: %s\n", ok.error().message.c_str());
      return 1;
    }
  }
  std::cout << "bootstrap " << (*k)->bootstrap_servers() << std::endl;
  std::string line;
  while (std::getline(std::cin, line)) {
    std::istringstream in(line);
    std::string cmd;
    in >> cmd;
    kvs::Result<void> r;
    if (cmd == "create") {
      std::string topic;
      int parts = 1;
      in >> topic >> parts;
      r = (*k)->create_topic(topic, parts);
    } else if (cmd == "down" || cmd == "up") {
      int id = 0;
      in >> id;
      r = (*k)->set_broker_down(id, cmd == "down");
    } else if (cmd == "errors") {
      int api = 0, count = 0, code = 0;
      in >> api >> count >> code;
      r = (*k)->push_request_errors(static_cast<int16_t>(api), count, code);
    } else if (cmd == "quit") {
      break;
    } else {
      r = kvs::make_error(kvs::Errc::kInvalidArgument, "unknown command '" + cmd + "'");
    }
    std::cout << (r ? std::string("ok") : "error " + r.error().message) << std::endl;
  }
  return 0;
}
