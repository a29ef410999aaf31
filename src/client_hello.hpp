// Inspection of the first bytes a client sends, to tell a TLS ClientHello (and its server name)
// from anything else before a byte reaches the upstream. Pure: no I/O, no allocation that depends
// on what the peer claims.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace tcptunnel {

// The largest TLS record payload a client may send (2^14 bytes), and the most bytes the
// inspector ever looks at: one record header and that payload.
inline constexpr std::size_t max_tls_record_payload = 16384;
inline constexpr std::size_t tls_record_header_size = 5;
inline constexpr std::size_t max_client_hello_bytes =
    tls_record_header_size + max_tls_record_payload;

// The longest server name accepted (a DNS name is at most 253 characters).
inline constexpr std::size_t max_server_name_length = 253;

enum class hello_verdict {
    need_more,  // a valid prefix of a ClientHello record: wait for more bytes
    ok,         // one complete, well-formed ClientHello in the first record
    not_tls,    // the first bytes are not a TLS handshake record (plain text, HTTP, SSH, ...)
    malformed,  // a TLS record whose ClientHello is inconsistent, truncated or badly laid out
    too_large,  // the record is longer than TLS allows, or the ClientHello spans records
};

// The verdict's name for log lines: "need-more", "ok", "not-tls", "malformed", "too-large".
std::string_view to_string(hello_verdict verdict);

struct hello_info {
    hello_verdict verdict = hello_verdict::need_more;
    // Why the bytes were refused (a fixed phrase, safe to log); empty for ok and need_more.
    std::string_view reason;
    // Set only with verdict ok: whether a host_name server name was sent, and that name in
    // lower case, made only of [a-z0-9.-] and at most max_server_name_length long.
    bool has_sni = false;
    std::string sni;
};

// Inspects the bytes a client has sent so far. Only the first TLS record is read (at most
// max_client_hello_bytes); bytes after it are ignored, so the verdict is final once it is not
// need_more: more bytes never change it. Every length is checked against its enclosing one, so
// an inconsistency is reported as soon as the bytes showing it have arrived. The cost is linear in
// the bytes given, capped at max_client_hello_bytes.
hello_info inspect_client_hello(std::span<const std::byte> bytes);

}  // namespace tcptunnel
