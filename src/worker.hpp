// One event loop: its listeners, its accept loops and the connections they accepted.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "asio_common.hpp"
#include "connection.hpp"

namespace tcptunnel {

// Threading model: one worker per thread, each with its own io_context, its own acceptors
// (SO_REUSEPORT when there are several workers) and its own connections. A connection never
// leaves the worker that accepted it, so nothing on the data path is shared or locked; only the
// counters in tunnel_stats are shared, as relaxed atomics. Calls other than the constructor and
// bind() must be made on the worker's own thread (post them to io()).
class worker {
public:
    worker(const tunnel_config& config, tunnel_stats& stats, std::atomic<std::uint64_t>& next_id);
    worker(const worker&) = delete;
    worker& operator=(const worker&) = delete;
    ~worker();

    asio::io_context& io() { return *io_; }
    connection_context& context() { return context_; }

    // Binds and listens on one address; port 0 asks the kernel. Returns the bound port, or 0
    // with `error` set. IPv6 sockets are IPv6-only, so [::] and 0.0.0.0 can both be bound.
    std::uint16_t bind(const tcp::endpoint& endpoint, bool reuse_port, std::error_code& error);

    // The addresses this worker listens on.
    std::vector<tcp::endpoint> local_endpoints() const;

    void start_accepting();

    // Stops accepting; open connections go on.
    void stop_accepting();

    // Ends every open connection now (the drain deadline).
    void abort_connections();

    // Writes the folded upstream failures not yet reported (at exit).
    void flush_failure_logs();

    // Called by the worker's connections as each ends.
    void on_connection_end();

private:
    asio::awaitable<void> accept_loop(tcp::acceptor& acceptor);
    asio::awaitable<void> wait_for_free_slot();

    // Destroyed by hand in ~worker(), before the members its coroutines refer to.
    std::unique_ptr<asio::io_context> io_;
    std::vector<tcp::acceptor> acceptors_;
    std::optional<asio::steady_timer> slot_freed_;
    connection_context context_;
    std::atomic<std::uint64_t>& next_id_;
    log_rate_limiter limit_log_;
};

}  // namespace tcptunnel
