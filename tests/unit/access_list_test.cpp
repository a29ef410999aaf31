#include "access_list.hpp"

#include <doctest/doctest.h>

#include "address.hpp"

using tcptunnel::access_list;
using tcptunnel::parse_access_list;
using tcptunnel::parse_error;

namespace {

bool allows(const access_list& list, const char* client) {
    return list.allows(asio::ip::make_address(client));
}

std::string error_of(std::string_view text) {
    try {
        parse_access_list(text);
    } catch (const parse_error& error) {
        return error.what();
    }
    return "";
}

}  // namespace

TEST_CASE("an empty access list allows every client") {
    const access_list list;

    CHECK(list.empty());
    CHECK(allows(list, "127.0.0.1"));
    CHECK(allows(list, "203.0.113.9"));
    CHECK(allows(list, "::1"));
    CHECK(list.to_string().empty());
}

TEST_CASE("an IPv4 network allows the clients inside it and no other") {
    const auto list = parse_access_list("172.18.0.0/16");

    CHECK_FALSE(list.empty());
    CHECK(allows(list, "172.18.0.1"));
    CHECK(allows(list, "172.18.255.255"));
    CHECK_FALSE(allows(list, "172.19.0.1"));
    CHECK_FALSE(allows(list, "172.17.255.255"));
    CHECK_FALSE(allows(list, "::1"));
}

TEST_CASE("prefix lengths that are not a multiple of eight compare the right bits") {
    const auto list = parse_access_list("192.0.2.64/27,2001:db8:8000::/33");

    CHECK(allows(list, "192.0.2.64"));
    CHECK(allows(list, "192.0.2.95"));
    CHECK_FALSE(allows(list, "192.0.2.63"));
    CHECK_FALSE(allows(list, "192.0.2.96"));
    CHECK(allows(list, "2001:db8:8000::1"));
    CHECK(allows(list, "2001:db8:ffff:ffff::1"));
    CHECK_FALSE(allows(list, "2001:db8:7fff::1"));
}

TEST_CASE("a bare address means that one address") {
    const auto list = parse_access_list("127.0.0.1,::1");

    CHECK(allows(list, "127.0.0.1"));
    CHECK_FALSE(allows(list, "127.0.0.2"));
    CHECK(allows(list, "::1"));
    CHECK_FALSE(allows(list, "::2"));
    CHECK(list.to_string() == "127.0.0.1/32,::1/128");
}

TEST_CASE("an IPv4-mapped IPv6 client matches the IPv4 networks") {
    const auto list = parse_access_list("10.1.0.0/16");

    CHECK(allows(list, "::ffff:10.1.2.3"));
    CHECK_FALSE(allows(list, "::ffff:10.2.2.3"));
    CHECK_FALSE(allows(list, "::10.1.2.3"));
    CHECK_FALSE(allows(parse_access_list("::/0"), "::ffff:10.1.2.3"));
    CHECK(allows(parse_access_list("::/0"), "2001:db8::1"));
}

TEST_CASE("an IPv4-mapped IPv6 network is kept as the IPv4 network it maps") {
    const auto list = parse_access_list("::ffff:10.1.0.0/112");

    CHECK(list.to_string() == "10.1.0.0/16");
    CHECK(allows(list, "10.1.200.1"));
    CHECK(allows(list, "::ffff:10.1.200.1"));
    CHECK_FALSE(allows(list, "10.2.0.1"));
}

TEST_CASE("all networks of a list, and of merged lists, are consulted") {
    auto list = parse_access_list(" 127.0.0.1/32 , 192.0.2.0/24,fd00::/8 ");
    list.merge(parse_access_list("198.51.100.7"));

    CHECK(allows(list, "127.0.0.1"));
    CHECK(allows(list, "192.0.2.200"));
    CHECK(allows(list, "fd12:3456::1"));
    CHECK(allows(list, "198.51.100.7"));
    CHECK_FALSE(allows(list, "198.51.100.8"));
    CHECK_FALSE(allows(list, "127.0.0.2"));
    CHECK(list.to_string() == "127.0.0.1/32,192.0.2.0/24,fd00::/8,198.51.100.7/32");
}

TEST_CASE("the zero-length prefixes allow their whole family") {
    const auto list = parse_access_list("0.0.0.0/0");

    CHECK(allows(list, "203.0.113.1"));
    CHECK(allows(list, "::ffff:203.0.113.1"));
    CHECK_FALSE(allows(list, "2001:db8::1"));
}

TEST_CASE("link-local IPv6 clients match by address whatever their scope") {
    const auto list = parse_access_list("fe80::/64");

    CHECK(list.allows(asio::ip::make_address("fe80::1%1")));
    CHECK_FALSE(allows(list, "fe81::1"));
}

TEST_CASE("bad lists are refused with a one-line reason") {
    CHECK(error_of("") == "empty address list");
    CHECK(error_of("  ") == "empty address list");
    CHECK(error_of("10.0.0.0/8,") == "empty item in the address list");
    CHECK(error_of(",10.0.0.0/8") == "empty item in the address list");
    CHECK(error_of("10.0.0.0/8,,::1") == "empty item in the address list");
    CHECK(error_of("10.0.0.0/33") == "IPv4 prefix length is not a number in 0-32");
    CHECK(error_of("10.0.0.0/") == "IPv4 prefix length is not a number in 0-32");
    CHECK(error_of("10.0.0.0/-1") == "IPv4 prefix length is not a number in 0-32");
    CHECK(error_of("10.0.0.0/8/8") == "IPv4 prefix length is not a number in 0-32");
    CHECK(error_of("10.0.0.0/ 8") == "IPv4 prefix length is not a number in 0-32");
    CHECK(error_of("::/129") == "IPv6 prefix length is not a number in 0-128");
    CHECK(error_of("::/0128") == "IPv6 prefix length is not a number in 0-128");
    CHECK(error_of("10.0.0.1/8") == "address has bits set after its prefix length");
    CHECK(error_of("fd00::1/8") == "address has bits set after its prefix length");
    CHECK(error_of("fe80::1%eth0") == "a network cannot carry a scope id");
    CHECK(error_of("localhost") == "not an IPv4 or IPv6 address or network");
    CHECK(error_of("10.0.0") == "not an IPv4 or IPv6 address or network");
    CHECK(error_of("10.0.0.256") == "not an IPv4 or IPv6 address or network");
    CHECK(error_of("[::1]") == "not an IPv4 or IPv6 address or network");
    CHECK(error_of("10.0.0.0 /8") == "not an IPv4 or IPv6 address or network");
}
