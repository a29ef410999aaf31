// The tunnel process: listeners, worker threads, signals, shutdown.
#pragma once

#include "config.hpp"

namespace tcptunnel {

// Binds every listen address, prints the ready line(s) on stdout, serves until SIGTERM/SIGINT
// and the drain that follows, and returns the exit status (0 clean, 1 runtime failure).
int run_tunnel(const tunnel_config& config);

}  // namespace tcptunnel
