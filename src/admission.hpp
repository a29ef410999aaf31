// Admission of a new client before the upstream is dialled: source address and first bytes.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "access_list.hpp"
#include "asio_common.hpp"
#include "buffer_pool.hpp"

namespace tcptunnel {

struct admission_policy {
    access_list allow_from;                  // empty: every client address
    bool require_tls = false;                // the first bytes must be a TLS ClientHello
    std::vector<std::string> allowed_names;  // with require_tls: SNI must be one of these
    std::chrono::milliseconds hello_timeout{3000};

    bool inspects_bytes() const { return require_tls; }
    bool checks_anything() const { return require_tls || !allow_from.empty(); }
};

// Why a client was turned away ("not-allowed", "not-tls", "malformed", "too-large", "no-sni",
// "sni-not-allowed", "hello-timeout", "closed"), with a detail safe to log; empty when admitted.
struct admission_result {
    std::string refusal;
    std::string detail;

    bool admitted() const { return refusal.empty(); }
};

// Checks the client's address, then, when the policy asks for TLS, peeks (MSG_PEEK: nothing is
// consumed, so the relay later forwards the bytes unchanged, splice or not) at its first TLS
// record until it is a complete ClientHello, is refused, or hello_timeout passes.
asio::awaitable<admission_result> admit_client(tcp::socket& client, const admission_policy& policy,
                                               buffer_pool& buffers);

}  // namespace tcptunnel
