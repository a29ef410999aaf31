#include "address.hpp"

#include <doctest/doctest.h>

using tcptunnel::endpoint_spec;
using tcptunnel::format_endpoint;
using tcptunnel::parse_endpoint;
using tcptunnel::parse_error;
using tcptunnel::parse_port;

namespace {

std::string error_of(std::string_view text, bool with_default_host = false) {
    try {
        if (with_default_host) {
            parse_endpoint(text, "localhost");
        } else {
            parse_endpoint(text);
        }
    } catch (const parse_error& error) {
        return error.what();
    }
    return "";
}

}  // namespace

TEST_CASE("host:port, IPv4 and bracketed IPv6 addresses parse") {
    CHECK(parse_endpoint("host.docker.internal:18443") ==
          endpoint_spec{"host.docker.internal", 18443});
    CHECK(parse_endpoint("127.0.0.1:1") == endpoint_spec{"127.0.0.1", 1});
    CHECK(parse_endpoint("[::1]:65535") == endpoint_spec{"::1", 65535});
    CHECK(parse_endpoint("[fe80::1%eth0]:80") == endpoint_spec{"fe80::1%eth0", 80});
}

TEST_CASE("a tcp:// prefix and a trailing slash are accepted") {
    CHECK(parse_endpoint("tcp://localhost:8080") == endpoint_spec{"localhost", 8080});
    CHECK(parse_endpoint("tcp://[::1]:8080/") == endpoint_spec{"::1", 8080});
}

TEST_CASE("a scheme other than tcp:// is named as the problem") {
    CHECK(error_of("http://127.0.0.1:80") == "only the tcp:// scheme is accepted");
    CHECK(error_of("udp://[::1]:53") == "only the tcp:// scheme is accepted");
}

TEST_CASE("a host name longer than DNS allows is named as too long") {
    CHECK(error_of(std::string(254, 'a') + ":1") == "host name longer than 253 characters");
    CHECK(parse_endpoint(std::string(253, 'a') + ":1").host.size() == 253);
}

TEST_CASE("a bare port stands for the default host only where one is given") {
    CHECK(parse_endpoint("8080", "localhost") == endpoint_spec{"localhost", 8080});
    CHECK(error_of("8080") == "missing port");
}

TEST_CASE("bad ports are refused with a reason") {
    CHECK(error_of("host:0") == "port out of range 1-65535");
    CHECK(error_of("host:65536") == "port out of range 1-65535");
    CHECK(error_of("host:99999999999999999999") == "port out of range 1-65535");
    CHECK(error_of("host:-1") == "port is not a number");
    CHECK(error_of("host:http") == "port is not a number");
    CHECK(error_of("host:") == "missing port");
    CHECK(error_of("[::1]") == "missing port after ']'");
}

TEST_CASE("port 0 is accepted only where the kernel may choose") {
    CHECK(parse_endpoint("localhost:0", std::nullopt, true).port == 0);
    CHECK(parse_port("0", true) == 0);
    CHECK_THROWS_AS(parse_port("0"), parse_error);
}

TEST_CASE("empty and malformed hosts are refused") {
    CHECK(error_of("") == "empty address");
    CHECK(error_of(":80") == "empty host");
    CHECK(error_of("[]:80") == "brackets hold only an IPv6 address");
    CHECK(error_of("[::1:80") == "missing ']' after IPv6 address");
    CHECK(error_of("::1:80") == "an IPv6 address needs brackets, as in [::1]:PORT");
    CHECK(error_of("bad host:80") == "host has characters not allowed in a name or IP address");
    CHECK(error_of("bad\nhost:80") == "host has characters not allowed in a name or IP address");
}

TEST_CASE("formatting brackets IPv6 literals and round-trips") {
    CHECK(format_endpoint("::1", 443) == "[::1]:443");
    CHECK(format_endpoint("127.0.0.1", 443) == "127.0.0.1:443");
    CHECK(format_endpoint("localhost", 18443) == "localhost:18443");
    for (const char* text : {"[::1]:1", "a.example:65535", "10.0.0.1:80"}) {
        CHECK(format_endpoint(parse_endpoint(text)) == text);
    }
}
