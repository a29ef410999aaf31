// `tcptunnel probe`: a health check that connects to the upstream (optionally as a TLS client
// that verifies what gh will verify) and prints one stable diagnosis word.
#pragma once

#include <string>

#include "probe_options.hpp"
#include "tls_check.hpp"

namespace tcptunnel {

// The whole subcommand, with argv[0] == "probe": parses the options, runs the attempts and
// prints their lines. Returns the exit status: 0 ok, 1 any other word, 2 a usage error (one
// line "tcptunnel: probe: ..." on stderr).
int run_probe_command(int argc, const char* const* argv);

// Runs the attempts (1 + retries, pausing with exponential back-off after each failure),
// printing one line per attempt on stdout; the last line carries the verdict. Returns 0 when
// the last attempt's word is "ok", 1 otherwise.
int run_probe(const probe_options& options);

// One attempt within options.timeout: resolve, connect, and with options.tls the handshake and
// the HTTP GET. Never throws.
probe_outcome probe_once(const probe_options& options);

// Renders one output line (with its newline). `retry_in` is the pause before the next attempt,
// for a line that is not the last.
std::string render_probe_line(const probe_options& options, const probe_outcome& outcome,
                              unsigned attempt, unsigned max_attempts, bool last,
                              std::chrono::milliseconds retry_in);

}  // namespace tcptunnel
