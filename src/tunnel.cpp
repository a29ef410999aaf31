#include "tunnel.hpp"

#include <ifaddrs.h>
#include <sys/resource.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>

#include "worker.hpp"

namespace tcptunnel {

namespace {

// Descriptors kept aside for listeners, the event loop, the resolver, pipes and stdio when the
// connection limit is derived from RLIMIT_NOFILE.
constexpr std::size_t reserved_descriptors = 24;
constexpr std::size_t descriptors_per_connection = 2;

// After the drain, how long the connections ended by force get to write their summary lines.
constexpr auto final_grace = std::chrono::milliseconds(100);

// Raises the soft open-files limit to the hard one and returns the resulting soft limit.
std::size_t raise_open_files_limit() {
    rlimit limit{};
    if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) {
        return 1024;
    }
    if (limit.rlim_cur < limit.rlim_max) {
        rlimit raised = limit;
        raised.rlim_cur = limit.rlim_max;
        if (::setrlimit(RLIMIT_NOFILE, &raised) == 0) {
            limit = raised;
        }
    }
    return limit.rlim_cur == RLIM_INFINITY ? 1 << 20 : static_cast<std::size_t>(limit.rlim_cur);
}

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

std::vector<asio::ip::address> interface_addresses() {
    std::vector<asio::ip::address> addresses;
    ifaddrs* list = nullptr;
    if (::getifaddrs(&list) != 0) {
        return addresses;
    }
    for (auto* entry = list; entry; entry = entry->ifa_next) {
        if (!entry->ifa_addr) {
            continue;
        }
        if (entry->ifa_addr->sa_family == AF_INET) {
            const auto* in = reinterpret_cast<const sockaddr_in*>(entry->ifa_addr);
            addresses.push_back(asio::ip::address_v4(ntohl(in->sin_addr.s_addr)));
        } else if (entry->ifa_addr->sa_family == AF_INET6) {
            const auto* in6 = reinterpret_cast<const sockaddr_in6*>(entry->ifa_addr);
            asio::ip::address_v6::bytes_type bytes;
            std::memcpy(bytes.data(), in6->sin6_addr.s6_addr, bytes.size());
            addresses.push_back(asio::ip::address_v6(bytes, in6->sin6_scope_id));
        }
    }
    ::freeifaddrs(list);
    return addresses;
}

// The upstream's addresses as they resolve now; empty when the name does not resolve yet (not
// fatal: a relay may start before its network is up).
std::vector<tcp::endpoint> resolve_upstream_now(const endpoint_spec& upstream) {
    asio::io_context io;
    tcp::resolver resolver(io);
    std::error_code error;
    const auto entries = resolver.resolve(upstream.host, std::to_string(upstream.port),
                                          tcp::resolver::numeric_service, error);
    std::vector<tcp::endpoint> endpoints;
    for (const auto& entry : entries) {
        endpoints.push_back(entry.endpoint());
    }
    return endpoints;
}

std::string endpoint_text(const tcp::endpoint& endpoint) {
    return format_endpoint(endpoint.address().to_string(), endpoint.port());
}

// With several threads each worker binds its own SO_REUSEPORT socket, and the kernel would let
// any other SO_REUSEPORT socket of the same user join the group and take a share of the
// clients, such as a second tunnel started on the same port by mistake. A bind without
// SO_REUSEPORT first fails if anything holds the port; it also picks the port for port 0.
// Limitation: a process that joins the group after this check is not detected.
std::uint16_t claim_port_exclusively(const tcp::endpoint& endpoint, std::error_code& error) {
    asio::io_context io;
    tcp::acceptor probe(io);
    probe.open(endpoint.protocol(), error);
    if (!error) {
        probe.set_option(asio::socket_base::reuse_address(true), error);
    }
    if (!error && endpoint.address().is_v6()) {
        probe.set_option(asio::ip::v6_only(true), error);
    }
    if (!error) {
        probe.bind(endpoint, error);
    }
    return error ? 0 : probe.local_endpoint(error).port();
}

// Once the event loops have returned, the process is on its way out with status 0: a stop signal
// has nothing left to stop, and its default action would turn that status into death by the
// signal. Asio puts the default action back when it clears a signal set, so the signals are
// blocked in this thread while the sets are cleared and ignored from then on; one that arrived
// meanwhile is discarded as it is ignored.
// Limitation: a signal the kernel hands to one of Asio's resolver threads in those few
// microseconds still takes the default action.
void ignore_signals_from_now_on(asio::signal_set& stop_signals, asio::signal_set& stats_signal) {
    constexpr int handled_signals[] = {SIGINT, SIGTERM, SIGHUP, SIGUSR1};
    sigset_t handled;
    sigemptyset(&handled);
    for (const int signal_number : handled_signals) {
        sigaddset(&handled, signal_number);
    }
    pthread_sigmask(SIG_BLOCK, &handled, nullptr);

    std::error_code ignored;
    stop_signals.clear(ignored);
    stats_signal.clear(ignored);
    for (const int signal_number : handled_signals) {
        std::signal(signal_number, SIG_IGN);
    }

    pthread_sigmask(SIG_UNBLOCK, &handled, nullptr);
}

}  // namespace

bool dials_itself(const tcp::endpoint& upstream, const std::vector<tcp::endpoint>& listeners,
                  const std::vector<asio::ip::address>& local_addresses) {
    // A connection to ::ffff:a.b.c.d reaches the IPv4 listener on a.b.c.d.
    auto address = upstream.address();
    if (address.is_v6() && address.to_v6().is_v4_mapped()) {
        address = asio::ip::make_address_v4(asio::ip::v4_mapped, address.to_v6());
    }
    const bool is_local =
        address.is_loopback() ||
        std::find(local_addresses.begin(), local_addresses.end(), address) != local_addresses.end();
    for (const auto& listener : listeners) {
        if (listener.port() != upstream.port()) {
            continue;
        }
        if (listener.address() == address) {
            return true;
        }
        if (listener.address().is_unspecified() && is_local &&
            listener.address().is_v4() == address.is_v4()) {
            return true;
        }
    }
    return false;
}

int run_tunnel(const tunnel_config& given_config) {
    auto config = given_config;
    configure_logging(config.level, config.format);
    std::signal(SIGPIPE, SIG_IGN);
    const auto open_files = raise_open_files_limit();
    const auto connections_that_fit = std::max<std::size_t>(
        1, (open_files > reserved_descriptors ? open_files - reserved_descriptors : 0) /
               descriptors_per_connection);
    if (config.max_connections == 0) {
        config.max_connections = connections_that_fit;
    } else if (config.max_connections > connections_that_fit) {
        // Beyond this, clients would be accepted only to fail for want of a descriptor for
        // their upstream; waiting in the backlog serves them better.
        log_event(log_level::warn, "max_connections_capped",
                  {{"requested", static_cast<std::uint64_t>(config.max_connections)},
                   {"max_connections", static_cast<std::uint64_t>(connections_that_fit)},
                   {"open_files_limit", static_cast<std::uint64_t>(open_files)}});
        config.max_connections = connections_that_fit;
    }

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
                if (reuse_port && each == workers.front()) {
                    port = claim_port_exclusively({address, port}, error);
                }
                const auto bound = error ? 0 : each->bind({address, port}, reuse_port, error);
                if (error) {
                    // localhost without IPv6 (a container with IPv6 disabled) carries on with IPv4.
                    const bool optional_family =
                        spec.endpoint.host == "localhost" && address.is_v6() && any_bound;
                    log_event(
                        optional_family ? log_level::warn : log_level::error,
                        optional_family ? "listen_skipped" : "listen_failed",
                        {{"address", endpoint_text({address, port})}, {"error", error.message()}});
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

    // A tunnel dialling itself accepts its own connections until the fd table is full.
    const auto listeners = workers.front()->local_endpoints();
    const auto local_addresses = interface_addresses();
    for (const auto& upstream : resolve_upstream_now(config.upstream)) {
        if (dials_itself(upstream, listeners, local_addresses)) {
            std::fprintf(stderr,
                         "tcptunnel: --to %s resolves to %s, one of this tunnel's own listen "
                         "addresses (expected an upstream other than the tunnel)\n",
                         config.upstream_display.c_str(), endpoint_text(upstream).c_str());
            return 2;
        }
    }

    if (config.admission.allow_from.empty()) {
        for (const auto& listener : listeners) {
            if (!listener.address().is_loopback()) {
                log_event(log_level::warn, "open_relay",
                          {{"address", endpoint_text(listener)},
                           {"detail",
                            "every host that reaches this address can use the tunnel; "
                            "restrict it with --allow-from"}});
            }
        }
    }

    // Shutdown: the first signal stops accepting and starts the drain; the drain ends when the
    // last connection closes, at the drain deadline, or at a second signal.
    auto& main_io = workers.front()->io();
    asio::signal_set stop_signals(main_io, SIGINT, SIGTERM, SIGHUP);
    asio::signal_set stats_signal(main_io, SIGUSR1);
    asio::steady_timer drain_deadline(main_io);
    bool draining = false;

    const auto stop_everything = [&]() {
        for (auto& each : workers) {
            asio::post(each->io(), [&each]() { each->finish(final_grace); });
        }
        std::error_code ignored;
        stop_signals.cancel(ignored);
        stats_signal.cancel(ignored);
        drain_deadline.cancel();
    };
    const auto check_drained = [&]() {
        if (draining && stats.active.load() == 0) {
            log_event(log_level::info, "stopped", {{"reason", "drained"}});
            stop_everything();
        }
    };
    for (auto& each : workers) {
        each->context().on_connection_end = [&main_io, &check_drained, &each]() {
            each->on_connection_end();
            asio::post(main_io, check_drained);
        };
    }

    std::function<void(const std::error_code&, int)> on_stats;
    on_stats = [&](const std::error_code& error, int) {
        if (!error) {
            stats.log("signal");
            stats_signal.async_wait(on_stats);
        }
    };
    stats_signal.async_wait(on_stats);

    std::function<void(const std::error_code&, int)> on_stop;
    on_stop = [&](const std::error_code& error, int signal_number) {
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
                  {{"signal", signal_number == SIGTERM  ? "SIGTERM"
                              : signal_number == SIGHUP ? "SIGHUP"
                                                        : "SIGINT"},
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
        stop_signals.async_wait(on_stop);
        check_drained();
    };
    stop_signals.async_wait(on_stop);

    // The ready line only now: a script may signal the moment it reads it, and before the signal
    // sets exist SIGTERM or SIGUSR1 would end the process by the default action.
    for (const auto& line : ready_lines) {
        std::fprintf(stdout, "%s\n", line.c_str());
    }
    std::fflush(stdout);
    log_event(log_level::debug, "ready",
              {{"max_connections", static_cast<std::uint64_t>(config.max_connections)},
               {"threads", config.threads}});

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
    ignore_signals_from_now_on(stop_signals, stats_signal);

    for (auto& each : workers) {
        each->flush_failure_logs();
    }
    stats.log("exit");
    return 0;
}

}  // namespace tcptunnel
