// Which client addresses may use the tunnel: a list of IPv4 and IPv6 networks. Pure: no I/O.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <asio/ip/address.hpp>

namespace tcptunnel {

// A set of networks a client address is matched against. An IPv4 client, or an IPv4-mapped IPv6
// client (::ffff:a.b.c.d), matches the IPv4 networks; any other IPv6 client the IPv6 networks.
class access_list {
  public:
    // True when the list has no network, which allows every client.
    bool empty() const { return networks_.empty(); }

    // True when the list is empty or the address lies in one of its networks.
    bool allows(const asio::ip::address& client) const;

    // Adds the networks of other (a repeated option widens the list).
    void merge(const access_list& other);

    // The networks in canonical form, comma-separated: "10.0.0.0/8,::1/128"; empty when empty.
    std::string to_string() const;

  private:
    friend access_list parse_access_list(std::string_view text);

    struct network {
        bool v6 = false;
        std::array<std::uint8_t, 16> bytes{};  // an IPv4 network uses the first four
        unsigned prefix_length = 0;
    };

    std::vector<network> networks_;
};

// Parses "CIDR[,CIDR...]": each item an IPv4 or IPv6 network such as 10.0.0.0/8 or fd00::/8, or a
// bare address standing for /32 or /128; spaces around items are ignored. An IPv4-mapped IPv6
// network with a prefix of at least 96 is taken as the IPv4 network it maps. Throws parse_error
// (one line, without the input) for an empty item, a bad address or prefix length, a scope id,
// or bits set after the prefix length.
access_list parse_access_list(std::string_view text);

}  // namespace tcptunnel
