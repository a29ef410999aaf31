// The Asio vocabulary shared by the networking files.
#pragma once

#include <algorithm>
#include <asio.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <initializer_list>
#include <system_error>

namespace tcptunnel {

using asio::ip::tcp;

// Completion token for coroutines on the data path: results come back as a tuple whose first
// element is the error_code, so an expected outcome (EOF, reset, cancel) never throws.
inline constexpr auto use_nothrow = asio::experimental::as_tuple(asio::use_awaitable);

// Whether `error` carries one of these errno values. Asio reports socket errors in a system
// category of its own, which compares equal neither to std::system_category codes nor to std::errc
// conditions, while splice(2) errors come in the standard categories: the value is compared,
// whichever system or generic category carries it.
inline bool is_errno(const std::error_code& error, std::initializer_list<int> values) {
    const auto& category = error.category();
    if (category != asio::error::get_system_category() && category != std::system_category() &&
        category != std::generic_category()) {
        return false;
    }
    return std::find(values.begin(), values.end(), error.value()) != values.end();
}

}  // namespace tcptunnel

#include <chrono>
#include <functional>
#include <memory>

namespace tcptunnel {

// A deadline tied to a scope: `on_expiry` runs once if the time passes while the object lives,
// and never after it is gone, even when the timer's completion was already queued at that
// moment (so on_expiry may safely refer to locals of the scope).
class scoped_deadline {
  public:
    scoped_deadline(const asio::any_io_executor& executor, std::chrono::milliseconds timeout,
                    std::function<void()> on_expiry)
        : timer_(executor, timeout), state_(std::make_shared<state>()) {
        timer_.async_wait(
            [state = state_, on_expiry = std::move(on_expiry)](const std::error_code& error) {
                if (!error && state->armed) {
                    state->armed = false;
                    state->expired = true;
                    on_expiry();
                }
            });
    }
    scoped_deadline(const scoped_deadline&) = delete;
    scoped_deadline& operator=(const scoped_deadline&) = delete;
    ~scoped_deadline() { disarm(); }

    // Stops the deadline; on_expiry will not run.
    void disarm() {
        state_->armed = false;
        timer_.cancel();
    }

    // True when on_expiry ran.
    bool expired() const { return state_->expired; }

  private:
    struct state {
        bool armed = true;
        bool expired = false;
    };

    asio::steady_timer timer_;
    std::shared_ptr<state> state_;
};

}  // namespace tcptunnel
