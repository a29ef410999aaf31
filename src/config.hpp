// The command line and TCPTUNNEL_* environment variables, parsed into a tunnel_config.
#pragma once

#include <chrono>
#include <cstddef>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "address.hpp"
#include "admission.hpp"
#include "log.hpp"

namespace CLI {
class App;
}

namespace tcptunnel {

using namespace std::chrono_literals;

// One address to listen on, and how the ready line names it.
struct listen_spec {
    endpoint_spec endpoint;
    std::string display;  // "localhost:18443", or the legacy form's BIND_HOST:PORT as written
};

enum class splice_mode { automatic, always, never };

struct tunnel_config {
    std::vector<listen_spec> listen;
    endpoint_spec upstream{"host.docker.internal", 18443};
    std::string upstream_display = "host.docker.internal:18443";

    std::chrono::milliseconds connect_timeout = 10s;
    std::chrono::milliseconds drain_timeout = 1500ms;
    std::chrono::milliseconds idle_timeout = 0ms;        // 0: none
    std::chrono::milliseconds half_close_timeout = 0ms;  // 0: none
    std::size_t max_connections = 0;                     // 0: derived from RLIMIT_NOFILE
    unsigned threads = 1;
    splice_mode splice = splice_mode::automatic;
    admission_policy admission;

    log_level level = log_level::info;
    log_format format = log_format::text;
};

// What the command line asks for.
struct command_line {
    enum class action { run_tunnel, print_and_exit };
    action what = action::run_tunnel;
    tunnel_config config;
    std::string output;  // --help or --version text for print_and_exit
};

// A command line that cannot be run as written; what() is the one-line message (without the
// "tcptunnel: " prefix) saying what was wrong and what was expected. Exit status 2.
class usage_error : public std::runtime_error {
  public:
    using std::runtime_error::runtime_error;
};

// Parses the tunnel's command line: the option form or the old script's positional form
// "LOCAL_PORT REMOTE_HOST REMOTE_PORT [BIND_HOST]". Environment variables named
// TCPTUNNEL_<OPTION> supply options not given as flags. Throws usage_error.
command_line parse_command_line(int argc, const char* const* argv);

// Text from the command line, quoted and escaped for an error line.
std::string quote_input(std::string_view text);

// Parses a duration option; a bad value is a usage_error naming the option.
std::chrono::milliseconds make_duration(const std::string& option, const std::string& text);

// The name `option`'s value came under, for an error line: the option itself, or its TCPTUNNEL_*
// variable when the command line left the option out and the variable gave the value.
std::string value_name(const CLI::App& app, int argc, const char* const* argv,
                       const std::string& option);

// Parses argv with `app`: returns the text to print for --help or --version, or nothing once the
// options are read. A mistake becomes a one-line usage_error that points at `help_command`.
std::optional<std::string> parse_or_explain(CLI::App& app, int argc, const char* const* argv,
                                            const std::string& help_command);

// The --version text: program, Asio and OpenSSL versions, and how the binary was linked.
std::string version_text();

}  // namespace tcptunnel
