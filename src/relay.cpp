#include "relay.hpp"

#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>

#include <cerrno>

namespace tcptunnel {

namespace {

// How long a reset waits for the survivor to take the bytes already relayed to it, counted from
// the last time its send queue shrank.
constexpr auto reset_drain_stall_limit = std::chrono::seconds(2);
constexpr auto reset_drain_poll = std::chrono::milliseconds(5);

// Errors come from Asio (its own category) and from splice(2) (the system category).
bool is_reset(const std::error_code& error) {
    return is_errno(error, {ECONNRESET, EPIPE});
}

std::string describe(const std::error_code& error) {
    if (is_reset(error)) {
        return "rst";
    }
    if (is_errno(error, {ETIMEDOUT})) {
        return "timeout";
    }
    return "error: " + error.message();
}

bool is_closed(tcp::socket& socket) {
    tcp_info info{};
    socklen_t length = sizeof info;
    if (::getsockopt(socket.native_handle(), IPPROTO_TCP, TCP_INFO, &info, &length) != 0) {
        return false;
    }
    return info.tcpi_state == TCP_CLOSE;
}

// Bytes the kernel still holds for this socket: not yet sent, or sent and not yet acknowledged.
int unsent_bytes(tcp::socket& socket) {
    int queued = 0;
    if (::ioctl(socket.native_handle(), SIOCOUTQ, &queued) != 0) {
        return 0;
    }
    return queued;
}

}  // namespace

relay::relay(tcp::socket& downstream, tcp::socket& upstream, relay_pools pools,
             relay_options options)
    : downstream_(downstream),
      upstream_(upstream),
      pools_(pools),
      options_(options),
      client_to_upstream_{downstream, upstream, "client", "upstream"},
      upstream_to_client_{upstream, downstream, "upstream", "client"},
      watchdog_timer_(downstream.get_executor()),
      last_activity_(std::chrono::steady_clock::now()) {
    const bool always = options_.splice == splice_mode::always;
    client_to_upstream_.use_splice = always;
    upstream_to_client_.use_splice = always;
}

asio::awaitable<void> relay::run() {
    const auto executor = co_await asio::this_coro::executor;
    pumps_running_ = 2;
    asio::co_spawn(executor, pump_until_done(client_to_upstream_), asio::detached);
    asio::co_spawn(executor, pump_until_done(upstream_to_client_), asio::detached);

    co_await watchdog();
    close_both(false);
}

void relay::abort(const char* reason, bool reset_peers) {
    if (ending_) {
        return;
    }
    ending_ = true;

    // The tunnel's reason replaces an earlier FIN: a half-closed connection ended by its timeout
    // is logged as ended by that timeout.
    closed_by_ = "tunnel";
    how_ = reason;
    close_both(reset_peers);
}

void relay::note_end(const char* side, std::string how) {
    if (closed_by_.empty()) {
        closed_by_ = side;
        how_ = std::move(how);
    }
}

void relay::note_progress(relay_direction& direction, std::size_t bytes) {
    direction.bytes += bytes;
    last_activity_ = std::chrono::steady_clock::now();
}

void relay::close_both(bool reset_peers) {
    std::error_code ignored;
    if (reset_peers) {
        downstream_.set_option(asio::socket_base::linger(true, 0), ignored);
        upstream_.set_option(asio::socket_base::linger(true, 0), ignored);
    }
    downstream_.close(ignored);
    upstream_.close(ignored);
}

asio::awaitable<void> relay::pump_until_done(relay_direction& direction) {
    co_await pump(direction);

    direction.done = true;
    --pumps_running_;
    if (half_closed_at_ == std::chrono::steady_clock::time_point{}) {
        half_closed_at_ = std::chrono::steady_clock::now();
    }
    watchdog_timer_.cancel();
}

asio::awaitable<void> relay::pump(relay_direction& direction) {
    for (;;) {
        // Wait for readiness first and take a buffer or pipe only then: an idle connection
        // holds neither.
        auto [wait_error] = co_await direction.from.async_wait(tcp::socket::wait_read, use_nothrow);
        if (ending_ || wait_error == asio::error::operation_aborted) {
            co_return;
        }

        const auto end = direction.use_splice ? co_await splice_burst(direction)
                                              : co_await copy_burst(direction);
        if (end == burst_end::finished) {
            co_return;
        }
    }
}

asio::awaitable<relay::burst_end> relay::copy_burst(relay_direction& direction) {
    buffer_pool::lease buffer(pools_.buffers);
    for (;;) {
        std::error_code read_error;
        const auto count = direction.from.read_some(
            asio::buffer(buffer.data(), buffer_pool::lease::size()), read_error);
        if (read_error == asio::error::would_block) {
            co_return burst_end::drained;
        }
        if (read_error == asio::error::eof) {
            if (source_was_reset(direction)) {
                co_return co_await pass_on_failure(direction, true, asio::error::connection_reset);
            }
            co_return pass_on_fin(direction);
        }
        if (read_error) {
            co_return co_await pass_on_failure(direction, true, read_error);
        }

        // The next read waits for this write: the writer's pace bounds what is held.
        auto [write_error, written] = co_await asio::async_write(
            direction.to, asio::buffer(buffer.data(), count), use_nothrow);
        if (write_error) {
            co_return co_await pass_on_failure(direction, false, write_error);
        }
        note_progress(direction, written);

        // A full buffer means a bulk transfer: from now on the kernel moves the bytes.
        if (count == buffer_pool::lease::size() && options_.splice == splice_mode::automatic) {
            direction.use_splice = true;
            co_return burst_end::drained;
        }
        // A short read means the socket was drained a moment ago; waiting for the next edge
        // saves a read that would only say EAGAIN.
        if (count < buffer_pool::lease::size()) {
            co_return burst_end::drained;
        }
    }
}

asio::awaitable<relay::burst_end> relay::splice_burst(relay_direction& direction) {
    auto& pool = pools_.pipes;
    std::error_code error;
    auto pipe = pool.take(error);
    if (!pipe) {
        // No pipe to be had (fd limit): this direction carries on copying.
        direction.use_splice = false;
        co_return co_await copy_burst(direction);
    }

    const int source = direction.from.native_handle();
    const int sink = direction.to.native_handle();
    for (;;) {
        const auto moved_in = pipe->fill_from(source, error);
        const bool source_eof = !error && moved_in == 0;
        const bool source_dry = error == std::errc::operation_would_block;
        const bool source_failed = error && !source_dry;
        if (source_failed && error == std::errc::invalid_argument && pipe->held() == 0) {
            // A socket type that cannot splice: copy instead, for good.
            direction.use_splice = false;
            pool.give_back(std::move(pipe));
            co_return co_await copy_burst(direction);
        }

        // Whatever ended the read, bytes already taken from the source are delivered first.
        while (pipe->held() > 0) {
            const auto moved_out = pipe->drain_to(sink, error);
            if (error == std::errc::operation_would_block) {
                auto [wait_error] =
                    co_await direction.to.async_wait(tcp::socket::wait_write, use_nothrow);
                if (ending_ || wait_error) {
                    co_return burst_end::finished;  // the pipe (with its bytes) is closed
                }
                continue;
            }
            if (error) {
                co_return co_await pass_on_failure(direction, false, error);
            }
            note_progress(direction, moved_out);
        }

        if (source_eof) {
            pool.give_back(std::move(pipe));
            if (source_was_reset(direction)) {
                co_return co_await pass_on_failure(direction, true, asio::error::connection_reset);
            }
            co_return pass_on_fin(direction);
        }
        if (source_failed) {
            pool.give_back(std::move(pipe));
            co_return co_await pass_on_failure(direction, true, error);
        }
        // The pipe was empty when filled, so EAGAIN cannot have meant "no free pipe slot": the
        // socket is dry and its next data brings a new edge. A partial fill (slots ran out) reads
        // again after the drain.
        if (source_dry) {
            pool.give_back(std::move(pipe));
            co_return burst_end::drained;
        }
    }
}

// A reset sets a socket error that the first call to see it clears: when the other pump's write
// took it, this pump's read finds only an end of stream. The connection's state tells the two
// apart: after the peer's FIN it is CLOSE_WAIT, after a reset closed. (After FINs both ways the
// socket reads as closed too, so that case is left out.)
bool relay::source_was_reset(relay_direction& direction) {
    const auto& other =
        &direction == &client_to_upstream_ ? upstream_to_client_ : client_to_upstream_;
    return !other.fin_passed && is_closed(direction.from);
}

relay::burst_end relay::pass_on_fin(relay_direction& direction) {
    note_end(direction.source_name, "fin");
    direction.fin_passed = true;
    std::error_code ignored;
    direction.to.shutdown(tcp::socket::shutdown_send, ignored);
    return burst_end::finished;
}

asio::awaitable<relay::burst_end> relay::pass_on_failure(relay_direction& direction,
                                                         bool source_failed,
                                                         const std::error_code& error) {
    if (ending_ || error == asio::error::operation_aborted) {
        co_return burst_end::finished;
    }
    if (source_failed) {
        note_end(direction.source_name, describe(error));
        co_await reset_through(direction.from, direction.to);
    } else {
        note_end(direction.sink_name, describe(error));
        co_await reset_through(direction.to, direction.from);
    }
    co_return burst_end::finished;
}

asio::awaitable<void> relay::reset_through(tcp::socket& dead, tcp::socket& survivor) {
    if (ending_) {
        co_return;
    }
    ending_ = true;

    // Stop the other pump: it reads from `survivor` and writes to `dead`.
    std::error_code ignored;
    dead.close(ignored);
    survivor.cancel(ignored);

    // A reset discards the survivor's send queue, so first let the bytes already relayed to it
    // leave; only a peer that stops taking them for a while loses them.
    asio::steady_timer poll(survivor.get_executor());
    auto last_progress = std::chrono::steady_clock::now();
    int last_queued = unsent_bytes(survivor);
    while (last_queued > 0 && survivor.is_open() &&
           std::chrono::steady_clock::now() - last_progress < reset_drain_stall_limit) {
        poll.expires_after(reset_drain_poll);
        co_await poll.async_wait(use_nothrow);
        const int queued = unsent_bytes(survivor);
        if (queued < last_queued) {
            last_progress = std::chrono::steady_clock::now();
        }
        last_queued = queued;
    }

    if (survivor.is_open()) {
        survivor.set_option(asio::socket_base::linger(true, 0), ignored);
        survivor.close(ignored);
    }
}

asio::awaitable<void> relay::watchdog() {
    using clock = std::chrono::steady_clock;
    while (pumps_running_ > 0) {
        auto deadline = clock::time_point::max();
        const char* reason = nullptr;
        if (!ending_ && options_.idle_timeout.count() > 0) {
            deadline = last_activity_ + options_.idle_timeout;
            reason = "idle-timeout";
        }
        const bool half_closed = client_to_upstream_.done != upstream_to_client_.done;
        if (half_closed && !ending_ && options_.half_close_timeout.count() > 0 &&
            half_closed_at_ + options_.half_close_timeout < deadline) {
            deadline = half_closed_at_ + options_.half_close_timeout;
            reason = "half-close-timeout";
        }

        if (reason && clock::now() >= deadline) {
            abort(reason, false);
        } else {
            watchdog_timer_.expires_at(deadline);
            co_await watchdog_timer_.async_wait(use_nothrow);
        }
    }
}

}  // namespace tcptunnel
