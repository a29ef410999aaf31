// The tunnel process: listeners, worker threads, signals, shutdown.
#pragma once

#include <vector>

#include "asio_common.hpp"
#include "config.hpp"

namespace tcptunnel {

// Binds every listen address, prints the ready line(s) on stdout, serves until SIGTERM/SIGINT
// and the drain that follows, and returns the exit status: 0 clean, 1 runtime failure, 2 a
// configuration that cannot work (the upstream is the tunnel itself).
int run_tunnel(const tunnel_config& config);

// True when connecting to `upstream` would reach one of `listeners`: the same address and port,
// or a wildcard listener on that port and an upstream address that is one of `local_addresses`
// (any 127.0.0.0/8 or ::1 address counts as local).
bool dials_itself(const tcp::endpoint& upstream, const std::vector<tcp::endpoint>& listeners,
                  const std::vector<asio::ip::address>& local_addresses);

}  // namespace tcptunnel
