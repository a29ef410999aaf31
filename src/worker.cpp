#include "worker.hpp"

#include <sys/socket.h>

namespace tcptunnel {

namespace {

// After an accept error such as EMFILE the pending connection stays queued and the listener stays
// readable; waiting a moment before the next accept keeps that from becoming a busy loop.
constexpr auto accept_error_backoff = std::chrono::milliseconds(100);

// At the connection limit, a slot freed on another thread is noticed within this time.
constexpr auto slot_poll_interval = std::chrono::milliseconds(50);

}  // namespace

worker::worker(const tunnel_config& config, tunnel_stats& stats,
               std::atomic<std::uint64_t>& next_id)
    : io_(std::make_unique<asio::io_context>(1)),
      slot_freed_(std::in_place, *io_),
      context_{config, stats, {}, {}, {}, {}, {}},
      next_id_(next_id) {}

worker::~worker() {
    // Coroutines still suspended on the io_context are destroyed with it, and their destructors
    // use context_; so the io_context goes first, after the objects that belong to it.
    context_.on_connection_end = nullptr;
    acceptors_.clear();
    slot_freed_.reset();
    io_.reset();
}

std::uint16_t worker::bind(const tcp::endpoint& endpoint, bool reuse_port,
                           std::error_code& error) {
    tcp::acceptor acceptor(*io_);
    acceptor.open(endpoint.protocol(), error);
    if (error) {
        return 0;
    }
    acceptor.set_option(asio::socket_base::reuse_address(true), error);
    if (endpoint.address().is_v6()) {
        acceptor.set_option(asio::ip::v6_only(true), error);
    }
    if (reuse_port) {
        const int on = 1;
        ::setsockopt(acceptor.native_handle(), SOL_SOCKET, SO_REUSEPORT, &on, sizeof on);
    }
    acceptor.bind(endpoint, error);
    if (!error) {
        acceptor.listen(SOMAXCONN, error);
    }
    if (error) {
        return 0;
    }
    const auto port = acceptor.local_endpoint(error).port();
    acceptors_.push_back(std::move(acceptor));
    return port;
}

std::vector<tcp::endpoint> worker::local_endpoints() const {
    std::vector<tcp::endpoint> endpoints;
    for (const auto& acceptor : acceptors_) {
        std::error_code ignored;
        endpoints.push_back(acceptor.local_endpoint(ignored));
    }
    return endpoints;
}

void worker::start_accepting() {
    for (auto& acceptor : acceptors_) {
        asio::co_spawn(*io_, accept_loop(acceptor), asio::detached);
    }
}

void worker::stop_accepting() {
    for (auto& acceptor : acceptors_) {
        std::error_code ignored;
        acceptor.close(ignored);
    }
    slot_freed_->cancel();
}

void worker::abort_connections() {
    // abort() closes sockets; the list shrinks only later, as each coroutine ends.
    for (auto* handle : context_.live) {
        handle->abort("shutdown");
    }
}

void worker::flush_failure_logs() {
    for (auto& [word, limiter] : context_.failure_logs) {
        if (limiter.suppressed() > 0) {
            log_event(log_level::warn, "upstream_failed",
                      {{"upstream", context_.config.upstream_display},
                       {"reason", word},
                       {"count", limiter.suppressed()}});
        }
    }
}

void worker::on_connection_end() {
    slot_freed_->cancel();
}

asio::awaitable<void> worker::wait_for_free_slot() {
    const auto limit = context_.config.max_connections;
    while (context_.stats.active.load(std::memory_order_relaxed) >= limit) {
        if (const auto count = limit_log_.admit(std::chrono::steady_clock::now())) {
            log_event(log_level::warn, "connection_limit",
                      {{"max_connections", static_cast<std::uint64_t>(limit)},
                       {"count", count}});
        }
        slot_freed_->expires_after(slot_poll_interval);
        co_await slot_freed_->async_wait(use_nothrow);
    }
}

asio::awaitable<void> worker::accept_loop(tcp::acceptor& acceptor) {
    log_rate_limiter accept_failure_log;
    asio::steady_timer backoff(*io_);
    for (;;) {
        // At the limit, new clients wait in the listen backlog rather than being refused.
        co_await wait_for_free_slot();
        if (!acceptor.is_open()) {
            co_return;
        }

        auto [error, socket] = co_await acceptor.async_accept(use_nothrow);
        if (error == asio::error::operation_aborted || !acceptor.is_open()) {
            co_return;
        }
        if (error) {
            if (const auto count = accept_failure_log.admit(std::chrono::steady_clock::now())) {
                log_event(log_level::warn, "accept_failed",
                          {{"error", error.message()}, {"count", count}});
            }
            backoff.expires_after(accept_error_backoff);
            co_await backoff.async_wait(use_nothrow);
            continue;
        }

        context_.stats.accepted.fetch_add(1, std::memory_order_relaxed);
        const auto id = next_id_.fetch_add(1, std::memory_order_relaxed);
        asio::co_spawn(*io_, serve_connection(std::move(socket), context_, id), asio::detached);
    }
}

}  // namespace tcptunnel
