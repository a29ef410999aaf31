#include "duration.hpp"

#include <algorithm>
#include <charconv>

#include "address.hpp"

namespace tcptunnel {

std::chrono::milliseconds parse_duration(std::string_view text) {
    const auto digits_end =
        std::find_if(text.begin(), text.end(), [](char c) { return c < '0' || c > '9'; });
    const auto number = text.substr(0, static_cast<std::size_t>(digits_end - text.begin()));
    const auto unit = text.substr(number.size());
    if (number.empty()) {
        throw parse_error("duration must start with a whole number");
    }

    unsigned long long value = 0;
    auto [end, error] = std::from_chars(number.data(), number.data() + number.size(), value);
    if (error != std::errc() || end != number.data() + number.size() || value > 86'400'000) {
        throw parse_error("duration too large (at most 1 day)");
    }

    unsigned long long scale = 0;
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
        throw parse_error("duration needs a unit: ms, s, m or h");
    }
    if (value * scale > 86'400'000) {
        throw parse_error("duration too large (at most 1 day)");
    }
    return std::chrono::milliseconds(value * scale);
}

std::string format_duration(std::chrono::milliseconds duration) {
    const auto ms = duration.count();
    if (ms != 0 && ms % 3'600'000 == 0) {
        return std::to_string(ms / 3'600'000) + "h";
    }
    if (ms != 0 && ms % 60'000 == 0) {
        return std::to_string(ms / 60'000) + "m";
    }
    if (ms != 0 && ms % 1000 == 0) {
        return std::to_string(ms / 1000) + "s";
    }
    return std::to_string(ms) + "ms";
}

}  // namespace tcptunnel
