#include "address.hpp"

#include <algorithm>
#include <charconv>

namespace tcptunnel {

namespace {

// A host is a DNS name or an IP literal: letters, digits and a few punctuation marks. Anything
// else (spaces, control bytes, slashes) is refused here so it never reaches a resolver or a log.
bool is_valid_host(std::string_view host) {
    if (host.empty()) {
        return false;
    }
    return std::all_of(host.begin(), host.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
               c == '.' || c == '-' || c == '_' || c == ':' || c == '%';
    });
}

}  // namespace

std::uint16_t parse_port(std::string_view text, bool allow_zero) {
    if (text.empty()) {
        throw parse_error("missing port");
    }
    if (!std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; })) {
        throw parse_error("port is not a number");
    }

    unsigned long value = 0;
    auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
    const unsigned long lowest = allow_zero ? 0 : 1;
    if (error != std::errc() || end != text.data() + text.size() || value < lowest ||
        value > 65535) {
        throw parse_error(allow_zero ? "port out of range 0-65535" : "port out of range 1-65535");
    }
    return static_cast<std::uint16_t>(value);
}

endpoint_spec parse_endpoint(std::string_view text, std::optional<std::string_view> default_host,
                             bool allow_port_zero) {
    constexpr std::string_view scheme = "tcp://";
    if (text.substr(0, scheme.size()) == scheme) {
        text.remove_prefix(scheme.size());
    } else if (text.find("://") != std::string_view::npos) {
        throw parse_error("only the tcp:// scheme is accepted");
    }
    if (!text.empty() && text.back() == '/') {
        text.remove_suffix(1);
    }
    if (text.empty()) {
        throw parse_error("empty address");
    }

    endpoint_spec result;
    std::string_view port_text;
    if (text.front() == '[') {
        const auto close = text.find(']');
        if (close == std::string_view::npos) {
            throw parse_error("missing ']' after IPv6 address");
        }
        result.host = std::string(text.substr(1, close - 1));
        const auto rest = text.substr(close + 1);
        if (rest.empty() || rest.front() != ':') {
            throw parse_error("missing port after ']'");
        }
        port_text = rest.substr(1);
        if (!is_ipv6_literal(result.host)) {
            throw parse_error("brackets hold only an IPv6 address");
        }
    } else {
        const auto colon = text.rfind(':');
        if (colon == std::string_view::npos) {
            if (!default_host) {
                throw parse_error("missing port");
            }
            result.host = std::string(*default_host);
            port_text = text;
        } else {
            if (text.find(':') != colon) {
                throw parse_error("an IPv6 address needs brackets, as in [::1]:PORT");
            }
            result.host = std::string(text.substr(0, colon));
            port_text = text.substr(colon + 1);
        }
    }

    if (result.host.empty()) {
        throw parse_error("empty host");
    }
    if (result.host.size() > 253) {
        throw parse_error("host name longer than 253 characters");
    }
    if (!is_valid_host(result.host)) {
        throw parse_error("host has characters not allowed in a name or IP address");
    }
    result.port = parse_port(port_text, allow_port_zero);
    return result;
}

bool is_ipv6_literal(std::string_view host) {
    return host.find(':') != std::string_view::npos;
}

std::string format_endpoint(std::string_view host, std::uint16_t port) {
    std::string text;
    text.reserve(host.size() + 8);
    if (is_ipv6_literal(host)) {
        text += '[';
        text += host;
        text += ']';
    } else {
        text += host;
    }
    text += ':';
    text += std::to_string(port);
    return text;
}

std::string format_endpoint(const endpoint_spec& endpoint) {
    return format_endpoint(endpoint.host, endpoint.port);
}

}  // namespace tcptunnel
