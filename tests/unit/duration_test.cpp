#include "duration.hpp"

#include <doctest/doctest.h>

#include "address.hpp"

using namespace std::chrono_literals;
using tcptunnel::format_duration;
using tcptunnel::parse_duration;
using tcptunnel::parse_error;

namespace {

std::string error_of(std::string_view text) {
    try {
        parse_duration(text);
    } catch (const parse_error& error) {
        return error.what();
    }
    return "";
}

}  // namespace

TEST_CASE("durations in ms, s, m and h parse") {
    CHECK(parse_duration("500ms") == 500ms);
    CHECK(parse_duration("10s") == 10s);
    CHECK(parse_duration("2m") == 2min);
    CHECK(parse_duration("1h") == 1h);
    CHECK(parse_duration("0") == 0ms);
    CHECK(parse_duration("0s") == 0ms);
}

TEST_CASE("durations without a unit, with junk or too long are refused") {
    CHECK(error_of("10") == "duration needs a unit: ms, s, m or h");
    CHECK(error_of("10 s") == "duration needs a unit: ms, s, m or h");
    CHECK(error_of("1.5s") == "duration needs a unit: ms, s, m or h");
    CHECK(error_of("s") == "duration must start with a whole number");
    CHECK(error_of("") == "duration must start with a whole number");
    CHECK(error_of("-1s") == "duration must start with a whole number");
    CHECK(error_of("25h") == "duration too large (at most 1 day)");
    CHECK(error_of("99999999999999999999s") == "duration too large (at most 1 day)");
}

TEST_CASE("durations format in the largest exact unit and read back") {
    CHECK(format_duration(1500ms) == "1500ms");
    CHECK(format_duration(10s) == "10s");
    CHECK(format_duration(2min) == "2m");
    CHECK(format_duration(0ms) == "0ms");
    for (auto value : {1ms, 1500ms, 60000ms, 3600000ms}) {
        CHECK(parse_duration(format_duration(value)) == value);
    }
}
