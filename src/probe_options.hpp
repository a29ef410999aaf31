// The `tcptunnel probe` command line and TCPTUNNEL_* environment variables, parsed into
// probe_options.
#pragma once

#include <chrono>
#include <optional>
#include <string>

#include "address.hpp"

namespace tcptunnel {

// What one probe run checks, and how it reports.
struct probe_options {
    endpoint_spec target{"host.docker.internal", 18443};

    bool tls = false;
    std::optional<std::string> ca_file;  // when set, the only certificates trusted
    std::string server_name = "localhost";
    std::optional<std::string> http_path;  // "/api/v3/rate_limit": one GET after the handshake

    std::chrono::milliseconds timeout{5000};  // one whole attempt: resolve, connect, TLS, HTTP
    unsigned retries = 0;
    std::chrono::milliseconds retry_delay{1000};       // before the second attempt; then doubled
    std::chrono::milliseconds retry_delay_max{30000};  // the doubling stops here

    bool json = false;
};

// What the probe command line asks for.
struct probe_command_line {
    enum class action { run_probe, print_and_exit };
    action what = action::run_probe;
    probe_options options;
    std::string output;  // --help or --version text for print_and_exit
};

// Parses `probe [options]`, where argv[0] is "probe". Options not given as flags come from
// TCPTUNNEL_TO (shared with the tunnel) and TCPTUNNEL_PROBE_<OPTION>. Throws usage_error
// (config.hpp) with a one-line message that names the option and what was expected.
probe_command_line parse_probe_command_line(int argc, const char* const* argv);

}  // namespace tcptunnel
