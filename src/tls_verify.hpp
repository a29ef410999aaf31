// Certificate verification for `tcptunnel probe`: each problem OpenSSL finds in the server's
// chain is worded when found, and the most telling one becomes the probe's diagnosis.
#pragma once

#include <openssl/types.h>

#include <optional>
#include <string>

#include "tls_check.hpp"

namespace tcptunnel {

// One certificate problem, worded when found: the certificate it names belongs to the
// verification context and is not kept.
struct certificate_finding {
    int error = 0;  // an X509_V_ERR_* code
    std::string detail;
};

// What verification found during one handshake, the first problem of each kind.
struct certificate_findings {
    std::string trust_source;  // "CA file /tmp/ca.crt" or "the default store"
    std::string server_name;

    std::optional<certificate_finding> untrusted;
    std::optional<certificate_finding> expired;
    std::optional<certificate_finding> not_yet_valid;
    std::optional<certificate_finding> name_mismatch;
    std::optional<certificate_finding> other;
};

// The verify callback for SSL_set_verify; the SSL's app data must point at the handshake's
// certificate_findings.
int record_verify_error(int preverified, X509_STORE_CTX* store);

// The diagnosis for the most telling finding (untrusted, then expired, not yet valid, name
// mismatch, anything else), or nothing when verification found no problem.
std::optional<probe_outcome> verification_failure(const certificate_findings& found);

}  // namespace tcptunnel
