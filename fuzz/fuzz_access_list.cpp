// Fuzzes parse_access_list with the text of --allow-style options, and access_list::allows with
// client addresses from the input. An accepted list writes itself in a canonical form that parses
// back to the same list, allows every network address it holds, and decides each client the same
// way as a plain bit-by-bit reference over that canonical form.
#include <array>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <asio/ip/address.hpp>

#include "access_list.hpp"
#include "address.hpp"
#include "fuzz_check.hpp"

namespace {

struct reference_network {
    bool v6 = false;
    std::array<unsigned char, 16> bytes{};
    unsigned prefix_length = 0;
};

// Reads the canonical form: items "address/length" separated by commas.
std::vector<reference_network> read_canonical(std::string_view text) {
    std::vector<reference_network> networks;
    while (!text.empty()) {
        const auto comma = text.find(',');
        const auto item = text.substr(0, comma);
        text.remove_prefix(comma == std::string_view::npos ? text.size() : comma + 1);

        const auto slash = item.find('/');
        FUZZ_CHECK(slash != std::string_view::npos);
        std::error_code error;
        const auto address = asio::ip::make_address(std::string(item.substr(0, slash)), error);
        FUZZ_CHECK(!error);
        reference_network network;
        network.v6 = address.is_v6();
        network.prefix_length =
            static_cast<unsigned>(std::stoul(std::string(item.substr(slash + 1))));
        FUZZ_CHECK(network.prefix_length <= (network.v6 ? 128u : 32u));
        if (network.v6) {
            const auto bytes = address.to_v6().to_bytes();
            std::memcpy(network.bytes.data(), bytes.data(), 16);
            FUZZ_CHECK(!address.to_v6().is_v4_mapped() || network.prefix_length < 96);
        } else {
            const auto bytes = address.to_v4().to_bytes();
            std::memcpy(network.bytes.data(), bytes.data(), 4);
        }
        networks.push_back(network);
    }
    return networks;
}

bool bit(const std::array<unsigned char, 16>& bytes, unsigned index) {
    return (bytes[index / 8] >> (7 - index % 8)) & 1;
}

bool reference_allows(const std::vector<reference_network>& networks,
                      const asio::ip::address& client) {
    if (networks.empty()) {
        return true;
    }
    bool v6 = client.is_v6();
    std::array<unsigned char, 16> bytes{};
    if (v6) {
        const auto raw = client.to_v6().to_bytes();
        std::memcpy(bytes.data(), raw.data(), 16);
        if (client.to_v6().is_v4_mapped()) {
            v6 = false;
            std::memmove(bytes.data(), bytes.data() + 12, 4);
        }
    } else {
        const auto raw = client.to_v4().to_bytes();
        std::memcpy(bytes.data(), raw.data(), 4);
    }
    for (const auto& network : networks) {
        if (network.v6 != v6) {
            continue;
        }
        bool match = true;
        for (unsigned i = 0; i < network.prefix_length && match; ++i) {
            match = bit(network.bytes, i) == bit(bytes, i);
        }
        if (match) {
            return true;
        }
    }
    return false;
}

asio::ip::address network_address(const reference_network& network) {
    if (network.v6) {
        asio::ip::address_v6::bytes_type bytes;
        std::memcpy(bytes.data(), network.bytes.data(), 16);
        return asio::ip::address_v6(bytes);
    }
    return asio::ip::address_v4(
        {network.bytes[0], network.bytes[1], network.bytes[2], network.bytes[3]});
}

std::optional<tcptunnel::access_list> try_parse(std::string_view text) {
    try {
        return tcptunnel::parse_access_list(text);
    } catch (const tcptunnel::parse_error& error) {
        const std::string_view reason = error.what();
        FUZZ_CHECK(!reason.empty());
        FUZZ_CHECK(tcptunnel::fuzz::is_printable_ascii(reason));
        return std::nullopt;
    }
}

// After the list's text and a NUL: client addresses, 4 bytes for IPv4 or 17 bytes (a marker
// byte, then 16) for IPv6.
std::vector<asio::ip::address> read_clients(std::string_view rest) {
    std::vector<asio::ip::address> clients;
    while (!rest.empty()) {
        if (rest.front() == '6' && rest.size() >= 17) {
            asio::ip::address_v6::bytes_type bytes;
            std::memcpy(bytes.data(), rest.data() + 1, 16);
            clients.emplace_back(asio::ip::address_v6(bytes));
            rest.remove_prefix(17);
        } else if (rest.size() >= 4) {
            asio::ip::address_v4::bytes_type bytes;
            std::memcpy(bytes.data(), rest.data(), 4);
            clients.emplace_back(asio::ip::address_v4(bytes));
            rest.remove_prefix(4);
        } else {
            break;
        }
    }
    return clients;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto input = tcptunnel::fuzz::as_text(data, size);
    const auto nul = input.find('\0');
    const auto text = input.substr(0, nul);
    const auto clients =
        read_clients(nul == std::string_view::npos ? std::string_view{} : input.substr(nul + 1));

    const auto list = try_parse(text);
    if (!list) {
        return 0;
    }
    FUZZ_CHECK(!list->empty());
    const auto canonical = list->to_string();
    FUZZ_CHECK(tcptunnel::fuzz::is_printable_ascii(canonical));
    const auto reparsed = try_parse(canonical);
    FUZZ_CHECK(reparsed.has_value());
    FUZZ_CHECK(reparsed->to_string() == canonical);

    const auto networks = read_canonical(canonical);
    for (const auto& network : networks) {
        FUZZ_CHECK(list->allows(network_address(network)));
    }
    for (const auto& client : clients) {
        FUZZ_CHECK(list->allows(client) == reference_allows(networks, client));
        if (client.is_v4()) {
            const auto mapped = asio::ip::make_address_v6(asio::ip::v4_mapped, client.to_v4());
            FUZZ_CHECK(list->allows(mapped) == list->allows(client));
        }
    }

    auto doubled = *list;
    doubled.merge(*reparsed);
    FUZZ_CHECK(doubled.to_string() == canonical + "," + canonical);
    return 0;
}
