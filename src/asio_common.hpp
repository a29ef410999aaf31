// The Asio vocabulary shared by the networking files.
#pragma once

#include <asio.hpp>
#include <asio/experimental/as_tuple.hpp>

namespace tcptunnel {

using asio::ip::tcp;

// Completion token for coroutines on the data path: results come back as a tuple whose first
// element is the error_code, so an expected outcome (EOF, reset, cancel) never throws.
inline constexpr auto use_nothrow = asio::experimental::as_tuple(asio::use_awaitable);

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
