// Fuzzes parse_duration against a plain reference (a whole number, then ms, s, m or h; a bare
// zero; at most one day), and checks that format_duration writes every duration in range so
// that it parses back to the same value.
#include <algorithm>
#include <chrono>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>

#include "address.hpp"
#include "duration.hpp"
#include "fuzz_check.hpp"

namespace {

constexpr long long one_day_ms = 86'400'000;

std::optional<long long> reference_duration(std::string_view text) {
    std::size_t digits = 0;
    while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9') {
        ++digits;
    }
    if (digits == 0) {
        return std::nullopt;
    }
    long long value = 0;
    for (std::size_t i = 0; i < digits; ++i) {
        value = value * 10 + (text[i] - '0');
        if (value > one_day_ms) {
            return std::nullopt;
        }
    }

    const auto unit = text.substr(digits);
    long long scale = 0;
    if (unit == "ms") {
        scale = 1;
    } else if (unit == "s") {
        scale = 1000;
    } else if (unit == "m") {
        scale = 60'000;
    } else if (unit == "h") {
        scale = 3'600'000;
    } else if (unit.empty() && value == 0) {
        scale = 1;
    } else {
        return std::nullopt;
    }
    if (value * scale > one_day_ms) {
        return std::nullopt;
    }
    return value * scale;
}

std::optional<long long> try_parse(std::string_view text) {
    try {
        return tcptunnel::parse_duration(text).count();
    } catch (const tcptunnel::parse_error& error) {
        const std::string_view reason = error.what();
        FUZZ_CHECK(!reason.empty());
        FUZZ_CHECK(tcptunnel::fuzz::is_printable_ascii(reason));
        return std::nullopt;
    }
}

void check_round_trip(long long ms) {
    const auto text = tcptunnel::format_duration(std::chrono::milliseconds(ms));
    FUZZ_CHECK(try_parse(text) == ms);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto text = tcptunnel::fuzz::as_text(data, size);

    const auto parsed = try_parse(text);
    FUZZ_CHECK(parsed == reference_duration(text));
    if (parsed) {
        FUZZ_CHECK(*parsed >= 0 && *parsed <= one_day_ms);
        check_round_trip(*parsed);
    }

    // The first bytes also stand for a duration in range, to exercise every unit of the formatter.
    std::uint32_t raw = 0;
    if (size > 0) {
        std::memcpy(&raw, data, std::min(size, sizeof raw));
    }
    check_round_trip(static_cast<long long>(raw % (one_day_ms + 1)));
    return 0;
}
