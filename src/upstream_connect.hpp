// Resolving the upstream name and connecting to one of its addresses (happy eyeballs).
#pragma once

#include <chrono>
#include <string>
#include <system_error>

#include "address.hpp"
#include "asio_common.hpp"

namespace tcptunnel {

// How an upstream connection turned out: the connected socket, or a diagnosis.
struct upstream_result {
    tcp::socket socket;
    tcp::endpoint endpoint;  // the address used (on success)
    std::string word;        // "ok", "refused", "timeout", "dns-nxdomain", ...
    std::string detail;      // e.g. "127.0.0.1:9 connection refused"
    std::chrono::steady_clock::duration connect_time{};

    bool ok() const { return word == "ok"; }
};

// The stable one-word name of a connect or resolve error (see DESIGN: probe diagnosis words).
std::string diagnosis_word(const std::error_code& error);

// Resolves `upstream` now (the hosts file may have changed since the last connection) and
// connects to its addresses in the order returned. Each attempt has `attempt_timeout`; when an
// attempt neither succeeds nor fails within `stagger`, the next address is tried beside it, so a
// black-holed address family costs at most `stagger`. The first attempt to connect wins.
asio::awaitable<upstream_result> connect_upstream(
    const endpoint_spec& upstream, std::chrono::milliseconds attempt_timeout,
    std::chrono::milliseconds stagger = std::chrono::milliseconds(250));

}  // namespace tcptunnel
