// Fuzzes parse_port against a plain reference: a non-empty run of decimal digits whose value is
// in 1..65535 (0..65535 when port 0 is allowed) is accepted with that value; nothing else is.
#include <optional>
#include <string>
#include <string_view>

#include "address.hpp"
#include "fuzz_check.hpp"

namespace {

std::optional<unsigned> reference_port(std::string_view text, bool allow_zero) {
    if (text.empty()) {
        return std::nullopt;
    }
    unsigned long value = 0;
    for (char c : text) {
        if (c < '0' || c > '9') {
            return std::nullopt;
        }
        value = value * 10 + static_cast<unsigned long>(c - '0');
        if (value > 65535) {
            return std::nullopt;
        }
    }
    if (value == 0 && !allow_zero) {
        return std::nullopt;
    }
    return static_cast<unsigned>(value);
}

std::optional<unsigned> try_parse(std::string_view text, bool allow_zero) {
    try {
        return tcptunnel::parse_port(text, allow_zero);
    } catch (const tcptunnel::parse_error& error) {
        const std::string_view reason = error.what();
        FUZZ_CHECK(!reason.empty());
        FUZZ_CHECK(tcptunnel::fuzz::is_printable_ascii(reason));
        return std::nullopt;
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto text = tcptunnel::fuzz::as_text(data, size);

    for (const bool allow_zero : {false, true}) {
        const auto parsed = try_parse(text, allow_zero);
        FUZZ_CHECK(parsed == reference_port(text, allow_zero));
        if (parsed) {
            FUZZ_CHECK(try_parse(std::to_string(*parsed), allow_zero) == parsed);
        }
    }
    return 0;
}
