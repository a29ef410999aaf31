#include "tunnel.hpp"

#include <csignal>
#include <cstdio>
#include <memory>
#include <thread>
#include <vector>

#include "asio_common.hpp"
#include "connection.hpp"

namespace tcptunnel {

namespace {

// After an accept error such as EMFILE the pending connection stays queued and the listener stays
// readable; waiting a moment before the next accept keeps that from becoming a busy loop.
constexpr auto accept_error_backoff = std::chrono::milliseconds(100);

struct bind_failure {
    std::string address;
    std::error_code error;
};

// Threading model: one io_context per thread, each with its own acceptors (SO_REUSEPORT when
// there are several) and its own connections. A connection never leaves the thread that
// accepted it, so nothing on the data path is shared or locked. Only the counters in
// tunnel_stats are shared, as relaxed atomics.
class worker {
public:
    worker(const tunnel_config& config, tunnel_stats& stats, std::atomic<std::uint64_t>& next_id)
        : io_(1), context_{config, stats, {}, {}, {}}, next_id_(next_id) {}

    asio::io_context& io() { return io_; }
    connection_context& context() { return context_; }
    std::size_t live_connections() const { return context_.live.size(); }

    // Binds one address; port 0 asks the kernel. Returns the bound port, or 0 with `error` set.
    std::uint16_t bind(const tcp::endpoint& endpoint, bool reuse_port, std::error_code& error) {
        tcp::acceptor acceptor(io_);
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

    void start_accepting() {
        for (auto& acceptor : acceptors_) {
            asio::co_spawn(io_, accept_loop(acceptor), asio::detached);
        }
    }

    // Stops accepting; open connections go on.
    void stop_accepting() {
        for (auto& acceptor : acceptors_) {
            std::error_code ignored;
            acceptor.close(ignored);
        }
    }

    // Ends every open connection now (the drain deadline).
    void abort_connections() {
        // abort() closes sockets; the list shrinks only later, as each coroutine ends.
        for (auto* handle : context_.live) {
            handle->abort("shutdown");
        }
    }

private:
    asio::awaitable<void> accept_loop(tcp::acceptor& acceptor) {
        log_rate_limiter accept_failure_log;
        asio::steady_timer backoff(io_);
        for (;;) {
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
            asio::co_spawn(io_, serve_connection(std::move(socket), context_, id), asio::detached);
        }
    }

    asio::io_context io_;
    std::vector<tcp::acceptor> acceptors_;
    connection_context context_;
    std::atomic<std::uint64_t>& next_id_;
};

// The addresses one listen spec stands for: localhost is both loopback families.
std::vector<asio::ip::address> listen_addresses(const endpoint_spec& spec, std::error_code& error) {
    if (spec.host == "localhost") {
        return {asio::ip::address_v4::loopback(), asio::ip::address_v6::loopback()};
    }
    const auto literal = asio::ip::make_address(spec.host, error);
    if (!error) {
        return {literal};
    }

    asio::io_context io;
    tcp::resolver resolver(io);
    const auto entries = resolver.resolve(spec.host, "", error);
    std::vector<asio::ip::address> addresses;
    for (const auto& entry : entries) {
        addresses.push_back(entry.endpoint().address());
    }
    return addresses;
}

std::string endpoint_text(const asio::ip::address& address, std::uint16_t port) {
    return format_endpoint(address.to_string(), port);
}

}  // namespace

int run_tunnel(const tunnel_config& config) {
    configure_logging(config.level, config.format);
    std::signal(SIGPIPE, SIG_IGN);

    tunnel_stats stats;
    std::atomic<std::uint64_t> next_id{1};
    std::vector<std::unique_ptr<worker>> workers;
    for (unsigned i = 0; i < std::max(1u, config.threads); ++i) {
        workers.push_back(std::make_unique<worker>(config, stats, next_id));
    }
    const bool reuse_port = workers.size() > 1;

    // Bind everything before printing the ready line: scripts connect as soon as they see it.
    std::vector<std::string> ready_lines;
    for (const auto& spec : config.listen) {
        std::error_code resolve_error;
        const auto addresses = listen_addresses(spec.endpoint, resolve_error);
        if (addresses.empty()) {
            log_event(log_level::error, "listen_failed",
                      {{"address", spec.display}, {"error", resolve_error.message()}});
            return 1;
        }

        std::uint16_t port = spec.endpoint.port;
        bool any_bound = false;
        for (const auto& address : addresses) {
            for (auto& each : workers) {
                std::error_code error;
                const auto bound = each->bind({address, port}, reuse_port, error);
                if (error) {
                    // localhost without IPv6 (a container with IPv6 disabled) carries on with IPv4.
                    const bool optional_family = spec.endpoint.host == "localhost" &&
                                                 address.is_v6() && any_bound;
                    log_event(optional_family ? log_level::warn : log_level::error,
                              optional_family ? "listen_skipped" : "listen_failed",
                              {{"address", endpoint_text(address, port)},
                               {"error", error.message()}});
                    if (!optional_family) {
                        return 1;
                    }
                    break;
                }
                port = bound;
                any_bound = true;
            }
        }

        auto display = spec.display;
        if (spec.endpoint.port == 0) {
            display = format_endpoint(spec.endpoint.host, port);
        }
        ready_lines.push_back("Forwarding " + display + " \u2192 " + config.upstream_display);
    }

    for (const auto& line : ready_lines) {
        std::fprintf(stdout, "%s\n", line.c_str());
    }
    std::fflush(stdout);

    // Shutdown: the first signal stops accepting and starts the drain; the drain ends when the
    // last connection closes, at the drain deadline, or at a second signal.
    auto& main_io = workers.front()->io();
    asio::signal_set signals(main_io, SIGINT, SIGTERM);
    asio::steady_timer drain_deadline(main_io);
    bool draining = false;

    auto stop_everything = [&workers, &signals, &drain_deadline]() {
        for (auto& each : workers) {
            asio::post(each->io(), [&each]() {
                each->abort_connections();
                each->io().stop();
            });
        }
        std::error_code ignored;
        signals.cancel(ignored);
        drain_deadline.cancel();
    };
    auto check_drained = [&]() {
        if (draining && stats.active.load() == 0) {
            log_event(log_level::info, "stopped", {{"reason", "drained"}});
            stop_everything();
        }
    };
    for (auto& each : workers) {
        each->context().on_connection_end = [&main_io, &check_drained]() {
            asio::post(main_io, check_drained);
        };
    }

    std::function<void(const std::error_code&, int)> on_signal;
    on_signal = [&](const std::error_code& error, int signal_number) {
        if (error) {
            return;
        }
        if (draining) {
            log_event(log_level::info, "stopped",
                      {{"reason", "second signal"}, {"open", stats.active.load()}});
            stop_everything();
            return;
        }
        draining = true;
        log_event(log_level::info, "draining",
                  {{"signal", signal_number == SIGTERM ? "SIGTERM" : "SIGINT"},
                   {"open", stats.active.load()},
                   {"drain_timeout_ms", static_cast<std::uint64_t>(config.drain_timeout.count())}});
        for (auto& each : workers) {
            asio::post(each->io(), [&each]() { each->stop_accepting(); });
        }
        drain_deadline.expires_after(config.drain_timeout);
        drain_deadline.async_wait([&](const std::error_code& timer_error) {
            if (!timer_error) {
                log_event(log_level::info, "stopped",
                          {{"reason", "drain deadline"}, {"open", stats.active.load()}});
                stop_everything();
            }
        });
        signals.async_wait(on_signal);
        check_drained();
    };
    signals.async_wait(on_signal);

    for (auto& each : workers) {
        each->start_accepting();
    }
    std::vector<std::thread> threads;
    for (std::size_t i = 1; i < workers.size(); ++i) {
        threads.emplace_back([&io = workers[i]->io()]() { io.run(); });
    }
    main_io.run();
    for (auto& thread : threads) {
        thread.join();
    }
    return 0;
}

}  // namespace tcptunnel
