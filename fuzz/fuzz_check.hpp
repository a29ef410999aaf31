// What the fuzz targets share: a property check that stops the run with the failed condition,
// and the splitting of one fuzz input into several strings.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

// Stops the process (libFuzzer then saves the input) when a property does not hold. Unlike
// assert(), it stays active in every build type.
#define FUZZ_CHECK(condition)                                                                     \
    do {                                                                                          \
        if (!(condition)) {                                                                       \
            std::fprintf(stderr, "%s:%d: property failed: %s\n", __FILE__, __LINE__, #condition); \
            std::abort();                                                                         \
        }                                                                                         \
    } while (false)

namespace tcptunnel::fuzz {

// The fuzz input as text (any bytes, NUL included).
inline std::string_view as_text(const std::uint8_t* data, std::size_t size) {
    return {reinterpret_cast<const char*>(data), size};
}

// Splits text on NUL bytes, keeping empty pieces, into at most max_pieces strings (the last one
// keeps the remaining NULs).
inline std::vector<std::string> split_on_nul(std::string_view text, std::size_t max_pieces) {
    std::vector<std::string> pieces;
    while (pieces.size() + 1 < max_pieces) {
        const auto nul = text.find('\0');
        if (nul == std::string_view::npos) {
            break;
        }
        pieces.emplace_back(text.substr(0, nul));
        text.remove_prefix(nul + 1);
    }
    pieces.emplace_back(text);
    return pieces;
}

// True when every byte is printable ASCII (0x20..0x7e).
inline bool is_printable_ascii(std::string_view text) {
    for (unsigned char c : text) {
        if (c < 0x20 || c >= 0x7f) {
            return false;
        }
    }
    return true;
}

}  // namespace tcptunnel::fuzz
