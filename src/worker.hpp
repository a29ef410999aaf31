// One event loop: its listeners, its accept loops and the connections they accepted.
#pragma once

#include <atomic>
#include <cstdint>
#include <list>
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

    // Stops accepting, ends every open connection, and stops the event loop once their
    // coroutines have wound down (so that their summary lines and byte counts are written), or
    // after `grace` at the latest.
    void finish(std::chrono::milliseconds grace);

    // Writes the folded upstream failures and refusals not yet reported (at exit).
    void flush_failure_logs();

    // Called by the worker's connections as each ends.
    void on_connection_end();

  private:
    asio::awaitable<void> accept_loop(tcp::acceptor& acceptor);
    // A slot is one unit of stats.active, shared by every worker: claimed here before a client
    // is accepted and handed to serve_connection, which releases it when the connection ends.
    bool try_claim_slot();
    void release_slot();
    // Waits for a free slot; false when the acceptor was closed meanwhile.
    asio::awaitable<bool> claim_slot(tcp::acceptor& acceptor, asio::steady_timer& wait);
    void wake_accept_loops();

    // Destroyed by hand in ~worker(), before the members its coroutines refer to.
    std::unique_ptr<asio::io_context> io_;
    std::vector<tcp::acceptor> acceptors_;
    std::list<asio::steady_timer*> accept_waits_;  // the timers accept loops are waiting on
    std::optional<asio::steady_timer> finish_timer_;
    bool finishing_ = false;
    connection_context context_;
    std::atomic<std::uint64_t>& next_id_;
    log_rate_limiter limit_log_;
};

}  // namespace tcptunnel
