#include "worker.hpp"

#include <poll.h>
#include <sys/socket.h>

namespace tcptunnel {

namespace {

// After an accept error such as EMFILE the pending connection stays queued and the listener stays
// readable; waiting a moment before the next accept keeps that from becoming a busy loop.
constexpr auto accept_error_backoff = std::chrono::milliseconds(100);

// At the connection limit, a slot freed on another thread is noticed within this time.
constexpr auto slot_poll_interval = std::chrono::milliseconds(50);

bool client_is_queued(tcp::acceptor& acceptor) {
    pollfd entry{acceptor.native_handle(), POLLIN, 0};
    return ::poll(&entry, 1, 0) == 1 && (entry.revents & POLLIN) != 0;
}

}  // namespace

worker::worker(const tunnel_config& config, tunnel_stats& stats,
               std::atomic<std::uint64_t>& next_id)
    : io_(std::make_unique<asio::io_context>(1)),
      context_{config, stats, {}, {}, {}, {}, {}, {}},
      next_id_(next_id) {}

worker::~worker() {
    // Coroutines still suspended on the io_context are destroyed with it, and their destructors
    // use context_; so the io_context goes first, after the objects that belong to it.
    context_.on_connection_end = nullptr;
    acceptors_.clear();
    finish_timer_.reset();
    io_.reset();
}

std::uint16_t worker::bind(const tcp::endpoint& endpoint, bool reuse_port, std::error_code& error) {
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
    wake_accept_loops();
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
    if (limit_log_.suppressed() > 0) {
        log_event(log_level::warn, "connection_limit",
                  {{"max_connections", static_cast<std::uint64_t>(context_.config.max_connections)},
                   {"count", limit_log_.suppressed()}});
    }
    for (auto& [reason, limiter] : context_.refusal_logs) {
        if (limiter.suppressed() > 0) {
            log_event(log_level::warn, "client_refused",
                      {{"reason", reason}, {"count", limiter.suppressed()}});
        }
    }
}

void worker::finish(std::chrono::milliseconds grace) {
    finishing_ = true;
    stop_accepting();
    abort_connections();
    if (context_.live.empty()) {
        io_->stop();
        return;
    }
    finish_timer_.emplace(*io_, grace);
    finish_timer_->async_wait([this](const std::error_code&) { io_->stop(); });
}

void worker::wake_accept_loops() {
    for (auto* timer : accept_waits_) {
        timer->cancel();
    }
}

void worker::on_connection_end() {
    wake_accept_loops();
    if (finishing_ && context_.live.empty()) {
        io_->stop();
    }
}

bool worker::try_claim_slot() {
    auto& active = context_.stats.active;
    const auto limit = static_cast<std::uint64_t>(context_.config.max_connections);
    auto current = active.load(std::memory_order_relaxed);
    while (current < limit) {
        if (active.compare_exchange_weak(current, current + 1, std::memory_order_relaxed)) {
            return true;
        }
    }
    return false;
}

void worker::release_slot() {
    context_.stats.active.fetch_sub(1, std::memory_order_relaxed);
}

asio::awaitable<bool> worker::claim_slot(tcp::acceptor& acceptor, asio::steady_timer& wait) {
    bool counted = false;
    while (!try_claim_slot()) {
        if (!acceptor.is_open()) {
            co_return false;
        }

        // One event per wait in which a client is really queued in the backlog.
        if (!counted && client_is_queued(acceptor)) {
            counted = true;
            if (const auto count = limit_log_.admit(std::chrono::steady_clock::now())) {
                log_event(log_level::warn, "connection_limit",
                          {{"max_connections",
                            static_cast<std::uint64_t>(context_.config.max_connections)},
                           {"count", count}});
            }
        }

        wait.expires_after(slot_poll_interval);
        co_await wait.async_wait(use_nothrow);
    }
    co_return true;
}

asio::awaitable<void> worker::accept_loop(tcp::acceptor& acceptor) {
    log_rate_limiter accept_failure_log;
    std::error_code ignored;
    acceptor.non_blocking(true, ignored);

    // Each loop waits on its own timer: expires_after() on a shared one would cancel the other
    // loops' waits and send them round again, each waking the next, without end. A connection
    // that ends cancels the waits, since a slot or a descriptor may just have been freed.
    asio::steady_timer wait(*io_);
    const auto registered = accept_waits_.insert(accept_waits_.end(), &wait);
    const auto unregister = [this, registered](void*) { accept_waits_.erase(registered); };
    const std::unique_ptr<void, decltype(unregister)> registration(&wait, unregister);

    // The slot is claimed before accept() takes the client off the backlog, so the limit holds
    // across all listeners and threads; at the limit, new clients wait in the backlog. Readiness
    // is edge-triggered: after an edge, accept until EAGAIN before waiting again.
    for (;;) {
        auto [wait_error] = co_await acceptor.async_wait(tcp::acceptor::wait_read, use_nothrow);
        if (wait_error || !acceptor.is_open()) {
            co_return;
        }

        for (;;) {
            if (!co_await claim_slot(acceptor, wait)) {
                co_return;
            }
            if (!acceptor.is_open()) {
                release_slot();
                co_return;
            }

            std::error_code error;
            auto socket = acceptor.accept(error);
            if (error == asio::error::would_block || error == asio::error::try_again) {
                release_slot();
                break;
            }
            if (error == asio::error::connection_aborted) {
                release_slot();  // the client gave up while queued
                continue;
            }
            if (error) {
                release_slot();
                if (const auto count = accept_failure_log.admit(std::chrono::steady_clock::now())) {
                    log_event(log_level::warn, "accept_failed",
                              {{"error", error.message()}, {"count", count}});
                }
                wait.expires_after(accept_error_backoff);
                co_await wait.async_wait(use_nothrow);
                if (!acceptor.is_open()) {
                    co_return;
                }
                continue;
            }

            context_.stats.accepted.fetch_add(1, std::memory_order_relaxed);
            const auto id = next_id_.fetch_add(1, std::memory_order_relaxed);
            asio::co_spawn(*io_, serve_connection(std::move(socket), context_, id), asio::detached);
        }
    }
}

}  // namespace tcptunnel
