#include "log.hpp"

#include <doctest/doctest.h>

using namespace std::chrono_literals;
using tcptunnel::escape_for_log;
using tcptunnel::log_format;
using tcptunnel::log_level;
using tcptunnel::log_rate_limiter;
using tcptunnel::render_log_line;

namespace {

const auto fixed_time = std::chrono::system_clock::time_point(1'700'000'000'123ms);

}  // namespace

TEST_CASE("text lines carry time, level, event and key=value fields") {
    const auto line = render_log_line(log_format::text, fixed_time, log_level::info, "close",
                                      {{"id", 7}, {"client", "127.0.0.1:5000"}, {"how", "fin"}});

    CHECK(line == "2023-11-14T22:13:20.123Z info close id=7 client=127.0.0.1:5000 how=fin\n");
}

TEST_CASE("control bytes, quotes and non-ASCII from peers are escaped, never raw") {
    const auto line = render_log_line(log_format::text, fixed_time, log_level::warn, "x",
                                      {{"detail", "a b\r\nc\"\x1b\xff"}});

    CHECK(line == "2023-11-14T22:13:20.123Z warn x detail=\"a b\\x0d\\x0ac\\\"\\x1b\\xff\"\n");
}

TEST_CASE("JSON lines are valid JSON whatever the bytes") {
    const auto line = render_log_line(log_format::json, fixed_time, log_level::error, "e",
                                      {{"n", 3}, {"s", "q\"\\\n\x80"}});

    CHECK(line ==
          "{\"time\":\"2023-11-14T22:13:20.123Z\",\"level\":\"error\",\"event\":\"e\","
          "\"n\":3,\"s\":\"q\\\"\\\\\\u000a\\u0080\"}\n");
}

TEST_CASE("long values are capped") {
    const std::string long_value(1000, 'a');

    const auto escaped = escape_for_log(long_value, 16);

    CHECK(escaped == std::string(16, 'a') + "...");
}

TEST_CASE("the rate limiter folds a burst into one line a second with its count") {
    log_rate_limiter limiter(1s);
    const auto start = std::chrono::steady_clock::time_point(10s);

    CHECK(limiter.admit(start) == 1);
    for (int i = 1; i <= 999; ++i) {
        CHECK(limiter.admit(start + std::chrono::microseconds(i * 900)) == 0);
    }
    CHECK(limiter.suppressed() == 999);
    CHECK(limiter.admit(start + 1001ms) == 1000);
    CHECK(limiter.admit(start + 1002ms) == 0);
}
