// Durations as users write them on the command line: "500ms", "10s", "2m", "1h".
#pragma once

#include <chrono>
#include <string>
#include <string_view>

namespace tcptunnel {

// Parses a whole number followed by ms, s, m or h; throws parse_error (address.hpp) otherwise.
// A bare "0" means zero. Values above one day are refused: they are certainly a typo.
std::chrono::milliseconds parse_duration(std::string_view text);

// Formats a duration the way parse_duration reads it back, in the largest exact unit.
std::string format_duration(std::chrono::milliseconds duration);

}  // namespace tcptunnel
