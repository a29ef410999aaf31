#include "connection.hpp"

#include "address.hpp"
#include "admission.hpp"
#include "relay.hpp"
#include "upstream_connect.hpp"

namespace tcptunnel {

namespace {

std::string endpoint_text(const tcp::endpoint& endpoint) {
    return format_endpoint(endpoint.address().to_string(), endpoint.port());
}

// A duration in milliseconds with three decimals; a number, so JSON writes it unquoted.
template <typename Duration>
log_field milliseconds_field(std::string_view key, Duration duration) {
    const auto micros = std::chrono::duration_cast<std::chrono::microseconds>(duration).count();
    char text[32];
    std::snprintf(text, sizeof text, "%.3f", static_cast<double>(micros) / 1000.0);
    log_field field(key, std::string_view(text));
    field.is_number = true;
    return field;
}

// Keeps a connection on its worker's list for as long as it lives; releases its slot at the end.
class registration {
  public:
    registration(connection_context& context, connection_handle& handle)
        : context_(context), position_(context.live.insert(context.live.end(), &handle)) {}
    registration(const registration&) = delete;
    registration& operator=(const registration&) = delete;
    ~registration() {
        context_.live.erase(position_);
        context_.stats.active.fetch_sub(1, std::memory_order_relaxed);
        if (context_.on_connection_end) {
            context_.on_connection_end();
        }
    }

  private:
    connection_context& context_;
    std::list<connection_handle*>::iterator position_;
};

// The client learns that the upstream is unreachable from a reset: a clean end of stream would
// look like an empty answer (gh reports only "EOF").
void reset_client(tcp::socket& downstream) {
    std::error_code ignored;
    downstream.set_option(asio::socket_base::linger(true, 0), ignored);
    downstream.close(ignored);
}

void log_upstream_failure(connection_context& context, std::uint64_t id, const std::string& client,
                          const upstream_result& result) {
    context.stats.count_failure(result.word);
    auto& limiter = context.failure_logs[result.word];
    const auto count = limiter.admit(std::chrono::steady_clock::now());
    if (count == 0) {
        return;
    }
    log_event(log_level::warn, "upstream_failed",
              {{"id", id},
               {"client", client},
               {"upstream", context.config.upstream_display},
               {"reason", result.word},
               {"detail", result.detail},
               {"count", count}});
}

void log_refusal(connection_context& context, std::uint64_t id, const std::string& client,
                 const admission_result& result) {
    context.stats.denied.fetch_add(1, std::memory_order_relaxed);
    const auto count = context.refusal_logs[result.refusal].admit(std::chrono::steady_clock::now());
    if (count == 0) {
        return;
    }
    log_event(log_level::warn, "client_refused",
              {{"id", id},
               {"client", client},
               {"reason", result.refusal},
               {"detail", result.detail},
               {"count", count}});
}

}  // namespace

void tunnel_stats::count_failure(const std::string& word) {
    upstream_failures.fetch_add(1, std::memory_order_relaxed);
    std::size_t index = failure_reasons.size() - 1;
    for (std::size_t i = 0; i < failure_reasons.size(); ++i) {
        if (word == failure_reasons[i]) {
            index = i;
        }
    }
    failures_by_reason[index].fetch_add(1, std::memory_order_relaxed);
}

void tunnel_stats::log(const char* when) const {
    const auto load = [](const std::atomic<std::uint64_t>& value) {
        return value.load(std::memory_order_relaxed);
    };
    log_event(log_level::info, "stats",
              {{"when", when},
               {"accepted", load(accepted)},
               {"active", load(active)},
               {"denied", load(denied)},
               {"upstream_failures", load(upstream_failures)},
               {"refused", load(failures_by_reason[0])},
               {"timeout", load(failures_by_reason[1])},
               {"unreachable", load(failures_by_reason[2])},
               {"dns_nxdomain", load(failures_by_reason[3])},
               {"dns_temporary", load(failures_by_reason[4])},
               {"other_failures", load(failures_by_reason[5])},
               {"from_client", load(bytes_from_client)},
               {"from_upstream", load(bytes_from_upstream)}});
}

void connection_handle::abort(const char* reason) {
    if (active_relay) {
        active_relay->abort(reason, true);
    } else if (downstream) {
        std::error_code ignored;
        downstream->set_option(asio::socket_base::linger(true, 0), ignored);
        downstream->close(ignored);
    }
}

std::string peer_text(const tcp::socket& socket) {
    std::error_code error;
    const auto endpoint = socket.remote_endpoint(error);
    return error ? "?" : endpoint_text(endpoint);
}

asio::awaitable<void> serve_connection(tcp::socket downstream, connection_context& context,
                                       std::uint64_t id) {
    const auto started_at = std::chrono::steady_clock::now();
    connection_handle handle{&downstream, nullptr};
    registration registered(context, handle);
    const auto client = peer_text(downstream);
    std::error_code ignored;
    downstream.set_option(tcp::no_delay(true), ignored);

    if (context.config.admission.checks_anything()) {
        const auto admission =
            co_await admit_client(downstream, context.config.admission, context.buffers);
        if (!admission.admitted()) {
            reset_client(downstream);
            log_refusal(context, id, client, admission);
            co_return;
        }
    }

    auto upstream =
        co_await connect_upstream(context.config.upstream, context.config.connect_timeout);
    if (!upstream.ok()) {
        reset_client(downstream);
        log_upstream_failure(context, id, client, upstream);
        co_return;
    }
    if (!downstream.is_open()) {
        co_return;  // ended by the drain deadline while connecting
    }

    upstream.socket.set_option(tcp::no_delay(true), ignored);
    downstream.non_blocking(true, ignored);
    upstream.socket.non_blocking(true, ignored);
    const auto upstream_text = endpoint_text(upstream.endpoint);
    if (log_enabled(log_level::debug)) {
        log_event(log_level::debug, "open",
                  {{"id", id},
                   {"client", client},
                   {"upstream", upstream_text},
                   milliseconds_field("connect_ms", upstream.connect_time)});
    }

    relay connection_relay(
        downstream, upstream.socket, {context.buffers, context.pipes},
        {context.config.idle_timeout, context.config.half_close_timeout, context.config.splice});
    handle.active_relay = &connection_relay;
    co_await connection_relay.run();
    handle.active_relay = nullptr;

    context.stats.bytes_from_client.fetch_add(connection_relay.bytes_from_client(),
                                              std::memory_order_relaxed);
    context.stats.bytes_from_upstream.fetch_add(connection_relay.bytes_from_upstream(),
                                                std::memory_order_relaxed);
    log_event(log_level::info, "close",
              {{"id", id},
               {"client", client},
               {"upstream", upstream_text},
               milliseconds_field("connect_ms", upstream.connect_time),
               milliseconds_field("duration_ms", std::chrono::steady_clock::now() - started_at),
               {"from_client", connection_relay.bytes_from_client()},
               {"from_upstream", connection_relay.bytes_from_upstream()},
               {"closed_by", connection_relay.closed_by()},
               {"how", connection_relay.how()}});
}

}  // namespace tcptunnel
