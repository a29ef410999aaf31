#include "upstream_connect.hpp"

#include <cerrno>
#include <memory>
#include <optional>
#include <vector>

namespace tcptunnel {

namespace {

// The attempts of one connect_upstream call. Attempts run as their own coroutines and share
// this state; `wake` is cancelled whenever one finishes so the driving coroutine re-evaluates.
struct connect_race {
    explicit connect_race(const asio::any_io_executor& executor) : wake(executor) {}

    std::vector<tcp::endpoint> endpoints;
    std::vector<std::unique_ptr<tcp::socket>> sockets;
    std::vector<std::error_code> errors;
    asio::steady_timer wake;
    std::size_t started = 0;
    std::size_t finished = 0;
    std::optional<std::size_t> winner;
};

asio::awaitable<void> run_attempt(std::shared_ptr<connect_race> race, std::size_t index,
                                  std::chrono::milliseconds timeout) {
    auto& socket = *race->sockets[index];
    scoped_deadline deadline(socket.get_executor(), timeout, [&socket]() {
        std::error_code ignored;
        socket.close(ignored);
    });

    auto [error] = co_await socket.async_connect(race->endpoints[index], use_nothrow);
    deadline.disarm();

    if (deadline.expired()) {
        error = asio::error::timed_out;
    }
    race->errors[index] = error;
    ++race->finished;
    if (!error && !race->winner) {
        race->winner = index;
    }
    race->wake.cancel();
}

std::string failure_detail(const connect_race& race) {
    std::string detail;
    for (std::size_t i = 0; i < race.started; ++i) {
        if (!race.errors[i] || race.errors[i] == asio::error::operation_aborted) {
            continue;
        }
        if (!detail.empty()) {
            detail += ", ";
        }
        detail += diagnosis_word(race.errors[i]);
        detail += ' ';
        detail +=
            format_endpoint(race.endpoints[i].address().to_string(), race.endpoints[i].port());
        detail += " (" + race.errors[i].message() + ")";
    }
    return detail;
}

}  // namespace

std::string diagnosis_word(const std::error_code& error) {
    if (!error) {
        return "ok";
    }
    if (is_errno(error, {ECONNREFUSED})) {
        return "refused";
    }
    if (is_errno(error, {ETIMEDOUT})) {
        return "timeout";
    }
    // A route that refuses locally fails the connect at once with its own errno: a prohibit
    // route with EACCES, a blackhole route with EINVAL, a local firewall rule with EPERM.
    if (is_errno(error, {ENETUNREACH, EHOSTUNREACH, EADDRNOTAVAIL, EACCES, EINVAL, EPERM})) {
        return "unreachable";
    }
    if (is_errno(error, {ECONNRESET, EPIPE})) {
        return "reset";
    }
    if (error == asio::error::host_not_found || error == asio::error::no_data) {
        return "dns-nxdomain";
    }
    if (error == asio::error::host_not_found_try_again) {
        return "dns-temporary";
    }
    return "error";
}

asio::awaitable<upstream_result> connect_upstream(const endpoint_spec& upstream,
                                                  std::chrono::milliseconds attempt_timeout,
                                                  std::chrono::milliseconds stagger) {
    const auto executor = co_await asio::this_coro::executor;
    const auto started_at = std::chrono::steady_clock::now();
    upstream_result result{tcp::socket(executor), {}, {}, {}, {}};
    auto race = std::make_shared<connect_race>(executor);

    std::error_code literal_error;
    const auto literal = asio::ip::make_address(upstream.host, literal_error);
    if (!literal_error) {
        race->endpoints.emplace_back(literal, upstream.port);
    } else {
        tcp::resolver resolver(executor);
        auto [error, entries] =
            co_await resolver.async_resolve(upstream.host, std::to_string(upstream.port),
                                            tcp::resolver::numeric_service, use_nothrow);
        if (error || entries.empty()) {
            result.word = diagnosis_word(error ? error : asio::error::host_not_found);
            result.detail =
                result.word + " " + upstream.host + ": " +
                (result.word == "dns-temporary" ? "temporary resolver failure" : "no such host");
            co_return result;
        }
        for (const auto& entry : entries) {
            race->endpoints.push_back(entry.endpoint());
        }
    }

    const auto count = race->endpoints.size();
    race->errors.resize(count);
    auto next_start = std::chrono::steady_clock::now();
    while (!race->winner) {
        const auto now = std::chrono::steady_clock::now();
        const bool none_pending = race->finished == race->started;
        if (race->started < count && (none_pending || now >= next_start)) {
            const auto index = race->started++;
            race->sockets.push_back(std::make_unique<tcp::socket>(executor));
            std::error_code open_error;
            race->sockets[index]->open(race->endpoints[index].protocol(), open_error);
            if (open_error) {
                race->errors[index] = open_error;
                ++race->finished;
                continue;
            }
            asio::co_spawn(executor, run_attempt(race, index, attempt_timeout), asio::detached);
            next_start = now + stagger;
            continue;
        }
        if (race->started == count && none_pending) {
            break;
        }

        race->wake.expires_at(race->started < count ? next_start
                                                    : std::chrono::steady_clock::time_point::max());
        co_await race->wake.async_wait(use_nothrow);
    }

    if (!race->winner) {
        result.word = diagnosis_word(race->errors[count - 1]);
        result.detail = failure_detail(*race);
        co_return result;
    }

    // The losers are still connecting; closing them completes their attempts as aborted.
    for (std::size_t i = 0; i < race->sockets.size(); ++i) {
        if (i != *race->winner) {
            std::error_code ignored;
            race->sockets[i]->close(ignored);
        }
    }
    result.socket = std::move(*race->sockets[*race->winner]);
    result.endpoint = race->endpoints[*race->winner];
    result.word = "ok";
    result.connect_time = std::chrono::steady_clock::now() - started_at;
    co_return result;
}

}  // namespace tcptunnel
