// Endpoint specifications as users write them: parsing and formatting, with no I/O.
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

namespace tcptunnel {

// A host (name or IP literal, without brackets) and a port, as written by the user.
struct endpoint_spec {
    std::string host;
    std::uint16_t port = 0;

    bool operator==(const endpoint_spec&) const = default;
};

// Thrown for input that does not parse; what() is a one-line reason without the input itself.
class parse_error : public std::runtime_error {
  public:
    using std::runtime_error::runtime_error;
};

// Parses "host:port", "[ipv6]:port", "ipv4:port", with an optional "tcp://" prefix.
// When default_host is given, a bare "port" stands for "default_host:port".
// Port 0 is accepted only when allow_port_zero is set (a listener that lets the kernel choose).
endpoint_spec parse_endpoint(std::string_view text,
                             std::optional<std::string_view> default_host = std::nullopt,
                             bool allow_port_zero = false);

// Parses a decimal port number in 1..65535 (0 too when allow_zero); throws parse_error otherwise.
std::uint16_t parse_port(std::string_view text, bool allow_zero = false);

// Formats host and port the way parse_endpoint reads them back: IPv6 literals get brackets.
std::string format_endpoint(std::string_view host, std::uint16_t port);
std::string format_endpoint(const endpoint_spec& endpoint);

// True when text is an IPv6 literal (contains a colon), the only hosts that need brackets.
bool is_ipv6_literal(std::string_view host);

}  // namespace tcptunnel
