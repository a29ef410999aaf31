#include "client_hello.hpp"

#include <algorithm>
#include <bitset>
#include <optional>
#include <utility>

namespace tcptunnel {

namespace {

constexpr std::uint8_t content_type_handshake = 0x16;
constexpr std::uint8_t handshake_type_client_hello = 0x01;
constexpr std::uint16_t extension_server_name = 0x0000;
constexpr std::uint8_t name_type_host_name = 0x00;
constexpr std::size_t random_size = 32;
constexpr std::size_t max_session_id_size = 32;

// A read position inside a structure whose declared extent is [position, end) of the client's
// bytes, not all of which may have arrived. Reading past `end` means a length field lied
// (overrun); reading past the bytes received means the rest is still on its way (short_input). The
// first failure sticks: later reads return zero and change nothing, so a parse step may read
// several fields and check the state once.
class cursor {
  public:
    enum class state { good, short_input, overrun };

    cursor(std::span<const std::byte> bytes, std::size_t position, std::size_t end)
        : bytes_(bytes), position_(position), end_(end) {}

    state status() const { return state_; }
    std::size_t remaining() const { return end_ - position_; }
    bool at_end() const { return position_ == end_; }

    // Reads an unsigned big-endian integer of width 1 to 3 bytes.
    std::uint32_t read(std::size_t width) {
        const auto field = read_bytes(width);
        std::uint32_t value = 0;
        for (const auto byte : field) {
            value = (value << 8) | std::to_integer<std::uint32_t>(byte);
        }
        return value;
    }

    // Returns the next count bytes, all of which have arrived, or an empty span on failure.
    std::span<const std::byte> read_bytes(std::size_t count) {
        if (!claim(count)) {
            return {};
        }
        if (position_ + count > bytes_.size()) {
            state_ = state::short_input;
            return {};
        }
        const auto field = bytes_.subspan(position_, count);
        position_ += count;
        return field;
    }

    // Moves past count bytes that need not have arrived yet, and returns a cursor over them.
    cursor take(std::size_t count) {
        const auto start = position_;
        if (!claim(count)) {
            return cursor(bytes_, start, start);
        }
        position_ += count;
        return cursor(bytes_, start, start + count);
    }

  private:
    // True when count more bytes fit in the declared extent; otherwise records the overrun.
    bool claim(std::size_t count) {
        if (state_ != state::good) {
            return false;
        }
        if (count > remaining()) {
            state_ = state::overrun;
            return false;
        }
        return true;
    }

    std::span<const std::byte> bytes_;
    std::size_t position_;
    std::size_t end_;
    state state_ = state::good;
};

hello_info verdict_of(hello_verdict verdict, std::string_view reason) {
    return hello_info{verdict, reason, false, {}};
}

// Maps a failed cursor to its verdict: bytes still to come, or a length that does not fit in the
// structure around it (reported with the given reason). Empty while the cursor is good.
std::optional<hello_info> failure_of(const cursor& at, std::string_view overrun_reason) {
    switch (at.status()) {
        case cursor::state::good:
            return std::nullopt;
        case cursor::state::short_input:
            return verdict_of(hello_verdict::need_more, {});
        case cursor::state::overrun:
            break;
    }
    return verdict_of(hello_verdict::malformed, overrun_reason);
}

// The first bytes must look like a TLS handshake record header; each is checked as soon as it
// arrives so plain text is refused from its first byte.
std::optional<hello_info> check_record_header_prefix(std::span<const std::byte> bytes) {
    const auto byte_at = [&](std::size_t index) {
        return std::to_integer<std::uint8_t>(bytes[index]);
    };
    if (!bytes.empty() && byte_at(0) != content_type_handshake) {
        return verdict_of(hello_verdict::not_tls, "not a TLS handshake record");
    }
    if ((bytes.size() > 1 && byte_at(1) != 0x03) || (bytes.size() > 2 && byte_at(2) > 0x04)) {
        return verdict_of(hello_verdict::not_tls, "record version is not TLS");
    }
    return std::nullopt;
}

// Parses the server_name extension's body (RFC 6066): exactly one host_name entry whose name is
// a lower-cased DNS name. The name is written to sni only when the whole entry is valid.
std::optional<hello_info> parse_server_name(cursor body, std::string& sni) {
    const auto list_length = body.read(2);
    if (auto failure = failure_of(body, "server name extension too short")) {
        return failure;
    }
    if (list_length != body.remaining()) {
        return verdict_of(hello_verdict::malformed,
                          "server name list length does not match its extension");
    }
    if (list_length == 0) {
        return verdict_of(hello_verdict::malformed, "empty server name list");
    }

    auto list = body.take(list_length);
    const auto name_type = list.read(1);
    const auto name_length = list.read(2);
    if (auto failure = failure_of(list, "server name entry cut short by its list")) {
        return failure;
    }
    if (name_type != name_type_host_name) {
        return verdict_of(hello_verdict::malformed, "server name is not a host name");
    }
    if (name_length == 0) {
        return verdict_of(hello_verdict::malformed, "empty server name");
    }
    if (name_length > max_server_name_length) {
        return verdict_of(hello_verdict::malformed, "server name longer than 253 bytes");
    }
    const auto name = list.read_bytes(name_length);
    if (auto failure = failure_of(list, "server name longer than its list")) {
        return failure;
    }
    if (!list.at_end()) {
        return verdict_of(hello_verdict::malformed, "more than one server name");
    }

    std::string lowered(name.size(), '\0');
    for (std::size_t i = 0; i < name.size(); ++i) {
        auto c = static_cast<char>(name[i]);
        if (c >= 'A' && c <= 'Z') {
            c = static_cast<char>(c - 'A' + 'a');
        }
        const bool allowed =
            (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '-';
        if (!allowed) {
            return verdict_of(hello_verdict::malformed,
                              "server name has a byte outside [a-z0-9.-]");
        }
        lowered[i] = c;
    }
    sni = std::move(lowered);
    return std::nullopt;
}

// Walks the extension list, which must fill the rest of the ClientHello exactly. Only the
// server name is read; each extension type may appear once (RFC 8446, section 4.2).
std::optional<hello_info> parse_extensions(cursor& hello, bool& has_sni, std::string& sni) {
    const auto extensions_length = hello.read(2);
    if (auto failure = failure_of(hello, "extensions length cut short")) {
        return failure;
    }
    if (extensions_length != hello.remaining()) {
        return verdict_of(hello_verdict::malformed,
                          "extensions length does not match the ClientHello length");
    }

    auto extensions = hello.take(extensions_length);
    // One bit per extension type: 8 KiB on the stack, whatever the peer sends.
    std::bitset<65536> seen;
    while (!extensions.at_end()) {
        const auto type = extensions.read(2);
        const auto length = extensions.read(2);
        auto body = extensions.take(length);
        if (auto failure = failure_of(extensions, "extension runs past the extension list")) {
            return failure;
        }
        if (seen.test(type)) {
            return verdict_of(hello_verdict::malformed, "extension sent twice");
        }
        seen.set(type);

        if (type == extension_server_name) {
            if (auto failure = parse_server_name(body, sni)) {
                return failure;
            }
            has_sni = true;
        }
    }
    return std::nullopt;
}

}  // namespace

std::string_view to_string(hello_verdict verdict) {
    switch (verdict) {
        case hello_verdict::need_more:
            return "need-more";
        case hello_verdict::ok:
            return "ok";
        case hello_verdict::not_tls:
            return "not-tls";
        case hello_verdict::malformed:
            return "malformed";
        case hello_verdict::too_large:
            return "too-large";
    }
    return "unknown";
}

hello_info inspect_client_hello(std::span<const std::byte> bytes) {
    bytes = bytes.first(std::min(bytes.size(), max_client_hello_bytes));
    if (auto failure = check_record_header_prefix(bytes)) {
        return *failure;
    }
    if (bytes.size() < tls_record_header_size) {
        return verdict_of(hello_verdict::need_more, {});
    }

    const std::size_t record_length =
        (std::to_integer<std::size_t>(bytes[3]) << 8) | std::to_integer<std::size_t>(bytes[4]);
    if (record_length > max_tls_record_payload) {
        return verdict_of(hello_verdict::too_large, "record longer than 16384 bytes");
    }
    if (record_length == 0) {
        return verdict_of(hello_verdict::malformed, "empty record");
    }
    const std::size_t record_end = tls_record_header_size + record_length;
    cursor record(bytes, tls_record_header_size, record_end);

    const auto handshake_type = record.read(1);
    const std::size_t handshake_length = record.read(3);
    if (auto failure = failure_of(record, "handshake header cut by the record's end")) {
        return *failure;
    }
    if (handshake_type != handshake_type_client_hello) {
        return verdict_of(hello_verdict::malformed, "handshake message is not a ClientHello");
    }
    if (handshake_length > record.remaining()) {
        return verdict_of(hello_verdict::too_large, "ClientHello spans more than one record");
    }
    if (handshake_length < record.remaining()) {
        return verdict_of(hello_verdict::malformed, "bytes after the ClientHello in its record");
    }

    // The fixed part: version, random, then three length-prefixed lists. A length field that
    // points past the ClientHello is reported with the name of the field it announces.
    auto hello = record.take(handshake_length);
    constexpr std::string_view cut = "ClientHello ends inside its fixed fields";
    const auto legacy_version = hello.read(2);
    hello.take(random_size);
    const auto session_id_length = hello.read(1);
    if (auto failure = failure_of(hello, cut)) {
        return *failure;
    }
    if ((legacy_version >> 8) != 0x03) {
        return verdict_of(hello_verdict::malformed, "ClientHello version is not TLS");
    }
    if (session_id_length > max_session_id_size) {
        return verdict_of(hello_verdict::malformed, "session id longer than 32 bytes");
    }
    hello.take(session_id_length);
    if (auto failure = failure_of(hello, "session id longer than the ClientHello")) {
        return *failure;
    }

    const auto cipher_suites_length = hello.read(2);
    if (auto failure = failure_of(hello, cut)) {
        return *failure;
    }
    if (cipher_suites_length == 0 || cipher_suites_length % 2 != 0) {
        return verdict_of(hello_verdict::malformed, "cipher suite list empty or of odd length");
    }
    hello.take(cipher_suites_length);
    if (auto failure = failure_of(hello, "cipher suites longer than the ClientHello")) {
        return *failure;
    }

    const auto compression_methods_length = hello.read(1);
    if (auto failure = failure_of(hello, cut)) {
        return *failure;
    }
    if (compression_methods_length == 0) {
        return verdict_of(hello_verdict::malformed, "no compression method");
    }
    hello.take(compression_methods_length);
    if (auto failure = failure_of(hello, "compression methods longer than the ClientHello")) {
        return *failure;
    }

    bool has_sni = false;
    std::string sni;
    // A ClientHello may end here: extensions are optional before TLS 1.3.
    if (!hello.at_end()) {
        if (auto failure = parse_extensions(hello, has_sni, sni)) {
            return *failure;
        }
    }

    // Fields that were only skipped (random, suites, other extensions) must have arrived too.
    if (bytes.size() < record_end) {
        return verdict_of(hello_verdict::need_more, {});
    }
    return hello_info{hello_verdict::ok, {}, has_sni, std::move(sni)};
}

}  // namespace tcptunnel
