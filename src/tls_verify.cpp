#include "tls_verify.hpp"

#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <utility>

#include "certificate_text.hpp"

namespace tcptunnel {

// Verification goes on past each problem (the callback returns 1) so that all of them are
// seen and the most telling one can be reported; the handshake then completes, and the probe
// closes it with close_notify instead of aborting with an alert the server would log.
int record_verify_error(int preverified, X509_STORE_CTX* store) {
    if (preverified == 1) {
        return 1;
    }
    auto* ssl =
        static_cast<SSL*>(X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx()));
    auto* found = static_cast<certificate_findings*>(SSL_get_app_data(ssl));
    const int error = X509_STORE_CTX_get_error(store);
    const X509* cert = X509_STORE_CTX_get_current_cert(store);
    const X509* leaf = X509_STORE_CTX_get0_cert(store);
    if (cert == nullptr) {
        cert = leaf;
    }

    std::optional<certificate_finding>* slot = &found->other;
    std::string detail;
    switch (error) {
        case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
        case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
        case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
        case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
        case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
        case X509_V_ERR_CERT_UNTRUSTED:
        case X509_V_ERR_CERT_REJECTED:
        case X509_V_ERR_CERT_SIGNATURE_FAILURE:
        case X509_V_ERR_UNABLE_TO_DECRYPT_CERT_SIGNATURE:
        case X509_V_ERR_INVALID_CA:
            slot = &found->untrusted;
            if (cert != nullptr) {
                detail = "certificate " + name_text(X509_get_subject_name(cert)) + " (issuer " +
                         name_text(X509_get_issuer_name(cert)) + ") ";
            }
            detail += "does not verify against " + found->trust_source + ": " +
                      X509_verify_cert_error_string(error);
            break;
        case X509_V_ERR_CERT_HAS_EXPIRED:
        case X509_V_ERR_CERT_NOT_YET_VALID:
            slot = error == X509_V_ERR_CERT_HAS_EXPIRED ? &found->expired : &found->not_yet_valid;
            detail = cert != nullptr ? validity_detail(cert) : "no certificate";
            break;
        case X509_V_ERR_HOSTNAME_MISMATCH:
        case X509_V_ERR_IP_ADDRESS_MISMATCH:
            slot = &found->name_mismatch;
            detail = found->server_name + " is not among the certificate's names: " +
                     (leaf != nullptr ? subject_alt_names(leaf) : "no certificate");
            break;
        default:
            detail = std::string("certificate ") +
                     (cert != nullptr ? name_text(X509_get_subject_name(cert)) : "?") + ": " +
                     X509_verify_cert_error_string(error);
            break;
    }
    if (!*slot) {
        *slot = certificate_finding{error, std::move(detail)};
    }
    return 1;
}

std::optional<probe_outcome> verification_failure(const certificate_findings& found) {
    const std::pair<const char*, const std::optional<certificate_finding>*> ranked[] = {
        {"tls-untrusted", &found.untrusted},
        {"tls-expired", &found.expired},
        {"tls-not-yet-valid", &found.not_yet_valid},
        {"tls-name-mismatch", &found.name_mismatch},
        {"tls-error", &found.other}};
    for (const auto& [word, slot] : ranked) {
        if (*slot) {
            return probe_outcome{word, (*slot)->detail};
        }
    }
    return std::nullopt;
}

}  // namespace tcptunnel
