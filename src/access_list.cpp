#include "access_list.hpp"

#include <algorithm>
#include <charconv>
#include <system_error>

#include "address.hpp"

namespace tcptunnel {

namespace {

std::string_view trim_spaces(std::string_view text) {
    while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) {
        text.remove_prefix(1);
    }
    while (!text.empty() && (text.back() == ' ' || text.back() == '\t')) {
        text.remove_suffix(1);
    }
    return text;
}

// True when the first prefix_length bits of a and b agree.
bool same_prefix(const std::array<std::uint8_t, 16>& a, const std::array<std::uint8_t, 16>& b,
                 unsigned prefix_length) {
    const unsigned whole_bytes = prefix_length / 8;
    const unsigned rest_bits = prefix_length % 8;
    if (!std::equal(a.begin(), a.begin() + whole_bytes, b.begin())) {
        return false;
    }
    if (rest_bits == 0) {
        return true;
    }
    const auto mask = static_cast<std::uint8_t>(0xff << (8 - rest_bits));
    return (a[whole_bytes] & mask) == (b[whole_bytes] & mask);
}

// True when a bit after the first prefix_length bits of the first size bytes is set.
bool has_host_bits(const std::array<std::uint8_t, 16>& bytes, std::size_t size,
                   unsigned prefix_length) {
    for (std::size_t bit = prefix_length; bit < size * 8; ++bit) {
        if (bytes[bit / 8] & (0x80 >> (bit % 8))) {
            return true;
        }
    }
    return false;
}

unsigned parse_prefix_length(std::string_view text, unsigned most) {
    const auto digits_only =
        !text.empty() && text.size() <= 3 &&
        std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
    unsigned value = 0;
    if (digits_only) {
        std::from_chars(text.data(), text.data() + text.size(), value);
    }
    if (!digits_only || value > most) {
        throw parse_error(most == 32 ? "IPv4 prefix length is not a number in 0-32"
                                     : "IPv6 prefix length is not a number in 0-128");
    }
    return value;
}

}  // namespace

bool access_list::allows(const asio::ip::address& client) const {
    if (networks_.empty()) {
        return true;
    }

    bool v6 = client.is_v6();
    std::array<std::uint8_t, 16> bytes{};
    if (v6 && client.to_v6().is_v4_mapped()) {
        v6 = false;
        const auto v4 = asio::ip::make_address_v4(asio::ip::v4_mapped, client.to_v6()).to_bytes();
        std::copy(v4.begin(), v4.end(), bytes.begin());
    } else if (v6) {
        bytes = client.to_v6().to_bytes();
    } else {
        const auto v4 = client.to_v4().to_bytes();
        std::copy(v4.begin(), v4.end(), bytes.begin());
    }

    return std::any_of(networks_.begin(), networks_.end(), [&](const network& entry) {
        return entry.v6 == v6 && same_prefix(entry.bytes, bytes, entry.prefix_length);
    });
}

void access_list::merge(const access_list& other) {
    networks_.insert(networks_.end(), other.networks_.begin(), other.networks_.end());
}

std::string access_list::to_string() const {
    std::string text;
    for (const auto& entry : networks_) {
        if (!text.empty()) {
            text += ',';
        }
        if (entry.v6) {
            text += asio::ip::address_v6(entry.bytes).to_string();
        } else {
            text += asio::ip::address_v4(
                        {entry.bytes[0], entry.bytes[1], entry.bytes[2], entry.bytes[3]})
                        .to_string();
        }
        text += '/' + std::to_string(entry.prefix_length);
    }
    return text;
}

access_list parse_access_list(std::string_view text) {
    if (trim_spaces(text).empty()) {
        throw parse_error("empty address list");
    }
    access_list list;
    std::size_t start = 0;
    while (true) {
        const auto comma = text.find(',', start);
        const auto item_end = comma == std::string_view::npos ? text.size() : comma;
        const auto item = trim_spaces(text.substr(start, item_end - start));
        if (item.empty()) {
            throw parse_error("empty item in the address list");
        }

        const auto slash = item.find('/');
        const auto address_text = item.substr(0, std::min(slash, item.size()));
        if (address_text.find('%') != std::string_view::npos) {
            throw parse_error("a network cannot carry a scope id");
        }
        std::error_code error;
        const auto address = asio::ip::make_address(std::string(address_text), error);
        if (error) {
            throw parse_error("not an IPv4 or IPv6 address or network");
        }

        access_list::network entry;
        entry.v6 = address.is_v6();
        const unsigned most = entry.v6 ? 128 : 32;
        entry.prefix_length = slash == std::string_view::npos
                                  ? most
                                  : parse_prefix_length(item.substr(slash + 1), most);
        if (entry.v6) {
            entry.bytes = address.to_v6().to_bytes();
        } else {
            const auto v4 = address.to_v4().to_bytes();
            std::copy(v4.begin(), v4.end(), entry.bytes.begin());
        }
        if (has_host_bits(entry.bytes, entry.v6 ? 16 : 4, entry.prefix_length)) {
            throw parse_error("address has bits set after its prefix length");
        }
        // ::ffff:a.b.c.d/N (N >= 96) names IPv4 clients: keep it with the IPv4 networks.
        if (entry.v6 && entry.prefix_length >= 96 && address.to_v6().is_v4_mapped()) {
            entry.v6 = false;
            std::copy(entry.bytes.begin() + 12, entry.bytes.end(), entry.bytes.begin());
            std::fill(entry.bytes.begin() + 4, entry.bytes.end(), 0);
            entry.prefix_length -= 96;
        }
        list.networks_.push_back(entry);

        if (comma == std::string_view::npos) {
            return list;
        }
        start = comma + 1;
    }
}

}  // namespace tcptunnel
