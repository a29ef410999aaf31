// The byte relay between the two sockets of one connection: two half-duplex pumps and a watchdog.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "asio_common.hpp"
#include "buffer_pool.hpp"
#include "config.hpp"
#include "splice_pump.hpp"

namespace tcptunnel {

// The worker's pools a relay borrows from (one worker per thread: never shared across threads).
struct relay_pools {
    buffer_pool& buffers;
    pipe_pool& pipes;
};

struct relay_options {
    std::chrono::milliseconds idle_timeout{0};        // 0: none
    std::chrono::milliseconds half_close_timeout{0};  // 0: none
    splice_mode splice = splice_mode::automatic;
};

// One direction of a relay: bytes read from `from` are written to `to`.
struct relay_direction {
    tcp::socket& from;
    tcp::socket& to;
    const char* source_name;  // "client" or "upstream": the side `from` belongs to
    const char* sink_name;
    bool use_splice = false;  // decided per direction; auto switches on after a bulk read
    std::uint64_t bytes = 0;
    bool done = false;
    bool fin_passed = false;  // shutdown(SHUT_WR) was called on `to`
};

// Relays until both directions have ended. A FIN from one side becomes shutdown(SHUT_WR) on the
// other while the other direction keeps flowing; a reset or error on one side becomes a reset on
// the other, after the bytes already relayed to it have left the tunnel.
class relay {
  public:
    relay(tcp::socket& downstream, tcp::socket& upstream, relay_pools pools, relay_options options);
    relay(const relay&) = delete;
    relay& operator=(const relay&) = delete;

    // Returns when both directions are done. The sockets are closed by then.
    asio::awaitable<void> run();

    // Ends the relay from outside: both sockets are closed at once. With `reset_peers` both
    // peers get a reset instead of an end of stream, for a cut that may fall mid-stream.
    void abort(const char* reason, bool reset_peers);

    std::uint64_t bytes_from_client() const { return client_to_upstream_.bytes; }
    std::uint64_t bytes_from_upstream() const { return upstream_to_client_.bytes; }

    // Which side ended the connection first ("client", "upstream" or "tunnel"), and how
    // ("fin", "rst", "idle-timeout", an error text, ...).
    const std::string& closed_by() const { return closed_by_; }
    const std::string& how() const { return how_; }

  private:
    // What a burst of transfers ended with: the source ran dry (wait for more) or the
    // direction is over (FIN passed on, reset, error, abort).
    enum class burst_end { drained, finished };

    asio::awaitable<void> pump_until_done(relay_direction& direction);
    asio::awaitable<void> pump(relay_direction& direction);
    asio::awaitable<burst_end> copy_burst(relay_direction& direction);
    asio::awaitable<burst_end> splice_burst(relay_direction& direction);
    burst_end pass_on_fin(relay_direction& direction);
    bool source_was_reset(relay_direction& direction);
    asio::awaitable<burst_end> pass_on_failure(relay_direction& direction, bool source_failed,
                                               const std::error_code& error);
    asio::awaitable<void> reset_through(tcp::socket& dead, tcp::socket& survivor);
    asio::awaitable<void> watchdog();
    void note_progress(relay_direction& direction, std::size_t bytes);
    void note_end(const char* side, std::string how);
    void close_both(bool reset_peers);

    tcp::socket& downstream_;
    tcp::socket& upstream_;
    relay_pools pools_;
    relay_options options_;
    relay_direction client_to_upstream_;
    relay_direction upstream_to_client_;
    asio::steady_timer watchdog_timer_;
    std::chrono::steady_clock::time_point last_activity_;
    std::chrono::steady_clock::time_point half_closed_at_{};
    int pumps_running_ = 0;
    bool ending_ = false;  // a reset or abort is under way: the pumps stop quietly
    std::string closed_by_;
    std::string how_;
};

}  // namespace tcptunnel
