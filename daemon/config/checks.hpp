// kvsd.toml's checks across keys (checks.cpp), for parse().
#pragma once

#include <string>

#include "config/config.hpp"
#include "kvs/result.hpp"

namespace kvs::config {

// Errors: kInvalidArgument naming file:line:col and key, or the file.
Result<void> check_keys(const Config& c, const std::string& source);

}  // namespace kvs::config
