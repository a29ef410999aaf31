// Fuzzes parse_endpoint with and without a default host and port 0: whatever it accepts is a
// valid host and port that format_endpoint writes back to the same value; anything else is a
// parse_error with a one-line reason.
#include <optional>
#include <string>
#include <string_view>

#include "address.hpp"
#include "fuzz_check.hpp"

namespace {

using tcptunnel::endpoint_spec;
using tcptunnel::parse_error;

bool is_host_byte(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '-' || c == '_' || c == ':' || c == '%';
}

std::optional<endpoint_spec> try_parse(std::string_view text,
                                       std::optional<std::string_view> default_host,
                                       bool allow_port_zero) {
    try {
        return tcptunnel::parse_endpoint(text, default_host, allow_port_zero);
    } catch (const parse_error& error) {
        const std::string_view reason = error.what();
        FUZZ_CHECK(!reason.empty());
        FUZZ_CHECK(tcptunnel::fuzz::is_printable_ascii(reason));
        return std::nullopt;
    }
}

void check_accepted(const endpoint_spec& endpoint, bool allow_port_zero) {
    FUZZ_CHECK(!endpoint.host.empty());
    FUZZ_CHECK(endpoint.host.size() <= 253);
    for (char c : endpoint.host) {
        FUZZ_CHECK(is_host_byte(c));
    }
    FUZZ_CHECK(allow_port_zero || endpoint.port != 0);

    const auto formatted = tcptunnel::format_endpoint(endpoint);
    const auto reparsed = try_parse(formatted, std::nullopt, allow_port_zero);
    FUZZ_CHECK(reparsed.has_value());
    FUZZ_CHECK(*reparsed == endpoint);
    FUZZ_CHECK(tcptunnel::format_endpoint(*reparsed) == formatted);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto text = tcptunnel::fuzz::as_text(data, size);
    constexpr std::string_view default_host = "localhost";

    const auto strict = try_parse(text, std::nullopt, false);
    const auto strict_zero = try_parse(text, std::nullopt, true);
    const auto with_default = try_parse(text, default_host, false);
    const auto with_default_zero = try_parse(text, default_host, true);

    for (const auto* result : {&strict, &with_default}) {
        if (*result) {
            check_accepted(**result, false);
        }
    }
    for (const auto* result : {&strict_zero, &with_default_zero}) {
        if (*result) {
            check_accepted(**result, true);
        }
    }

    // Allowing port 0 only adds inputs, and a default host only serves inputs without a host.
    if (strict) {
        FUZZ_CHECK(strict_zero == strict);
        FUZZ_CHECK(with_default == strict);
    }
    if (with_default) {
        FUZZ_CHECK(with_default_zero == with_default);
    }
    if (strict_zero) {
        FUZZ_CHECK(with_default_zero == strict_zero);
    }
    if (with_default && !strict) {
        FUZZ_CHECK(with_default->host == default_host);
    }
    return 0;
}
