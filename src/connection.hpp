// One client connection: connect upstream, relay, log one summary line.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <string>

#include "asio_common.hpp"
#include "buffer_pool.hpp"
#include "config.hpp"
#include "log.hpp"
#include "splice_pump.hpp"

namespace tcptunnel {

class relay;

// Process-wide counters, summed over all threads (relaxed atomics: they are only reported).
struct tunnel_stats {
    static constexpr std::array<const char*, 6> failure_reasons = {
        "refused", "timeout", "unreachable", "dns-nxdomain", "dns-temporary", "error"};

    std::atomic<std::uint64_t> accepted{0};
    std::atomic<std::uint64_t> active{0};  // open connections: the slots claimed
    std::atomic<std::uint64_t> denied{0};  // turned away by --allow-from / --require-tls
    std::atomic<std::uint64_t> upstream_failures{0};
    std::array<std::atomic<std::uint64_t>, failure_reasons.size()> failures_by_reason{};
    std::atomic<std::uint64_t> bytes_from_client{0};
    std::atomic<std::uint64_t> bytes_from_upstream{0};

    // Counts one upstream failure under its diagnosis word (unknown words count as "error").
    void count_failure(const std::string& word);

    // Writes the counters as one `stats` log line.
    void log(const char* when) const;
};

// What the worker knows of a live connection, so that it can end it at the drain deadline.
struct connection_handle {
    tcp::socket* downstream = nullptr;
    relay* active_relay = nullptr;  // set once the upstream is connected

    // Ends the connection at the drain deadline or a second signal. The peers get a reset: a
    // stream cut short must not look like a complete one (a bare end of stream explains nothing).
    void abort(const char* reason);
};

// The worker's side of its connections; one per io_context, used from its thread only.
struct connection_context {
    const tunnel_config& config;
    tunnel_stats& stats;
    std::list<connection_handle*> live;
    std::map<std::string, log_rate_limiter> failure_logs;  // by diagnosis word
    std::map<std::string, log_rate_limiter> refusal_logs;  // by admission refusal
    std::function<void()> on_connection_end;               // called after each connection ends
    buffer_pool buffers;
    pipe_pool pipes;
};

// Serves one accepted client until both directions are done, then releases the slot of
// stats.active that the caller claimed for it. Never throws.
asio::awaitable<void> serve_connection(tcp::socket downstream, connection_context& context,
                                       std::uint64_t id);

// "ADDRESS:PORT" of a socket's peer, or "?" once it is gone.
std::string peer_text(const tcp::socket& socket);

}  // namespace tcptunnel
