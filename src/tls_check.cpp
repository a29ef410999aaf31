#include "tls_check.hpp"

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <ctime>
#include <memory>

#include "certificate_text.hpp"
#include "log.hpp"
#include "tls_verify.hpp"

namespace tcptunnel {

namespace {

using steady = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr std::size_t first_bytes_kept = 256;
constexpr std::size_t status_line_limit = 8192;
constexpr std::size_t drain_limit = 1 << 20;
// How long a probe waits, after its close_notify, for the server's own close or an alert. A
// server that refuses the client only after the handshake (TLS 1.3) answers within this time
// even on a loaded machine; a well-behaved server closes at once, so an ok probe rarely waits.
// Limitation: a server slower than this to send its refusal is reported as ok.
constexpr auto close_grace = 2s;

// Per-handshake state that OpenSSL's callbacks fill in.
struct session_state {
    std::string first_bytes;  // what the peer sent first, to tell a non-TLS answer
    int io_errno = 0;         // errno of the last failed socket read or write
    certificate_findings certificates;
};

// Keeps the first bytes the peer sent and the errno of a failed read or write: OpenSSL reports
// a reset only as SSL_ERROR_SYSCALL, by which time errno may have been overwritten.
long record_io(BIO* bio, int operation, const char* data, std::size_t, int, long, int ret,
               std::size_t* processed) {
    auto* state = reinterpret_cast<session_state*>(BIO_get_callback_arg(bio));
    const bool is_read = operation == (BIO_CB_READ | BIO_CB_RETURN);
    const bool is_write = operation == (BIO_CB_WRITE | BIO_CB_RETURN);
    if (state == nullptr || (!is_read && !is_write)) {
        return ret;
    }
    if (ret <= 0) {
        if (errno != 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            state->io_errno = errno;
        }
    } else if (is_read && processed != nullptr && state->first_bytes.size() < first_bytes_kept) {
        const auto room = first_bytes_kept - state->first_bytes.size();
        state->first_bytes.append(data, std::min(room, *processed));
    }
    return ret;
}

// Waits until `fd` is ready for `events` or the deadline passes; false on the deadline.
bool wait_for(int fd, short events, steady::time_point deadline) {
    for (;;) {
        const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - steady::now());
        if (left.count() <= 0) {
            return false;
        }
        pollfd entry{fd, events, 0};
        const int ready =
            ::poll(&entry, 1, static_cast<int>(std::min<long long>(left.count(), INT_MAX)));
        // Errors and hang-ups count as ready: the next OpenSSL call reports them.
        if (ready > 0 || (ready < 0 && errno != EINTR)) {
            return true;
        }
    }
}

// The result of one OpenSSL call driven to completion over a non-blocking socket.
struct ssl_call {
    int result = 0;
    int ssl_error = SSL_ERROR_NONE;
    bool timed_out = false;
};

template <typename Operation>
ssl_call drive(SSL* ssl, int fd, steady::time_point deadline, Operation operation) {
    for (;;) {
        ERR_clear_error();
        errno = 0;
        const int result = operation();
        if (result > 0) {
            return {result, SSL_ERROR_NONE, false};
        }
        const int error = SSL_get_error(ssl, result);
        const short events = error == SSL_ERROR_WANT_READ    ? POLLIN
                             : error == SSL_ERROR_WANT_WRITE ? POLLOUT
                                                             : 0;
        if (events == 0) {
            return {result, error, false};
        }
        if (!wait_for(fd, events, deadline)) {
            return {result, error, true};
        }
    }
}

bool was_reset(const session_state& state) {
    return state.io_errno == ECONNRESET || state.io_errno == EPIPE;
}

bool peer_closed(const ssl_call& call) {
    return call.ssl_error == SSL_ERROR_ZERO_RETURN ||
           (call.ssl_error == SSL_ERROR_SYSCALL && ERR_peek_error() == 0) ||
           ERR_GET_REASON(ERR_peek_last_error()) == SSL_R_UNEXPECTED_EOF_WHILE_READING;
}

// The reason of the TLS alert the call failed with, when the peer sent one; read it before any
// other OpenSSL call replaces the error queue.
std::optional<std::string> alert_received(const ssl_call& call) {
    const auto code = ERR_peek_last_error();
    if (call.ssl_error == SSL_ERROR_SSL && ERR_GET_LIB(code) == ERR_LIB_SSL &&
        ERR_GET_REASON(code) >= SSL_AD_REASON_OFFSET) {
        return openssl_error_text();
    }
    return std::nullopt;
}

std::string refusal_after_handshake(const std::string& peer, const std::string& alert) {
    return peer + " refused the TLS session after the handshake: " + alert;
}

std::string first_line(std::string_view bytes) {
    const auto end = bytes.find_first_of("\r\n");
    return escape_for_log(bytes.substr(0, end), 80);
}

probe_outcome handshake_failure(const session_state& state, const ssl_call& call,
                                const std::string& peer) {
    // A peer that is not a TLS server fails the first record's header check, whatever it sent.
    if (!state.first_bytes.empty() && !looks_like_tls_record(state.first_bytes)) {
        return {"not-tls",
                peer + " answered \"" + first_line(state.first_bytes) + "\", not a TLS handshake"};
    }
    // Worded as connect_upstream words a reset that arrives while connecting: whether a server
    // that resets on accept is caught there or here is only a matter of timing.
    if (was_reset(state)) {
        return {"reset", peer + " (" + std::strerror(ECONNRESET) + ")"};
    }
    if (peer_closed(call)) {
        return {"tls-error", peer + " closed the connection during the TLS handshake"};
    }
    if (call.ssl_error == SSL_ERROR_SYSCALL && state.io_errno != 0) {
        return {"tls-error",
                "TLS handshake with " + peer + " failed: " + std::strerror(state.io_errno)};
    }
    return {"tls-error", "TLS handshake with " + peer + " failed: " + openssl_error_text()};
}

probe_outcome http_get(SSL* ssl, int fd, const tls_check_options& options,
                       const session_state& state, const std::string& peer,
                       steady::time_point deadline, const std::string& timeout_text) {
    const auto& path = *options.http_path;
    const std::string request = "GET " + path + " HTTP/1.1\r\nHost: " + options.http_host +
                                "\r\nUser-Agent: tcptunnel-probe\r\nAccept: */*\r\n"
                                "Connection: close\r\n\r\n";
    const auto sent = drive(ssl, fd, deadline, [&] {
        return SSL_write(ssl, request.data(), static_cast<int>(request.size()));
    });
    // A failed write does not end the exchange: a server that refuses the client after the
    // handshake (TLS 1.3) may have reset the connection already, its alert queued ahead of the
    // reset, and that alert says why.
    std::string response;
    ssl_call received;
    while (!sent.timed_out && response.find('\n') == std::string::npos &&
           response.size() < status_line_limit) {
        char buffer[4096];
        received = drive(ssl, fd, deadline,
                         [&] { return SSL_read(ssl, buffer, static_cast<int>(sizeof buffer)); });
        if (received.result <= 0) {
            break;
        }
        response.append(buffer, static_cast<std::size_t>(received.result));
    }

    const auto line_end = response.find_first_of("\r\n");
    if (line_end != std::string::npos || response.size() >= status_line_limit) {
        const auto line = std::string_view(response).substr(0, line_end);
        const int status = parse_status_line(line);
        const auto quoted = escape_for_log(line, 120);
        if (status == 0) {
            return {"error", "GET " + path + ": the answer is not HTTP: \"" + quoted + "\""};
        }
        probe_outcome outcome{status < 400 ? "ok" : "http-" + std::to_string(status),
                              "GET " + path + ": " + quoted};
        outcome.http_status = status;
        return outcome;
    }
    if (const auto alert = alert_received(received)) {
        return {"tls-error", "GET " + path + ": " + refusal_after_handshake(peer, *alert)};
    }
    const auto& failed = sent.result <= 0 ? sent : received;
    if (failed.timed_out) {
        return {"timeout", "GET " + path + ": no answer from " + peer + " within " + timeout_text};
    }
    if (was_reset(state)) {
        return {"reset", "GET " + path + ": " + peer + " reset the connection"};
    }
    if (peer_closed(failed)) {
        return {"error",
                "GET " + path + ": " + peer + " closed the connection before a status line"};
    }
    return {"tls-error", "GET " + path + ": " + openssl_error_text()};
}

// Sends close_notify, then reads (and drops) what the server still sends until it closes too:
// closing a socket with unread data (TLS 1.3 session tickets, the rest of an HTTP body) would
// send a reset instead of an orderly end. Returns the reason of a TLS alert received meanwhile:
// in TLS 1.3 a server refuses the client (for example for want of a client certificate) only
// after the client's side of the handshake has completed.
std::optional<std::string> close_gracefully(SSL* ssl, int fd, steady::time_point deadline) {
    const auto until = std::min(deadline, steady::now() + close_grace);
    // A close_notify that cannot be written (the server has reset the connection) still leaves
    // what the server sent before its reset to be read.
    const auto shutdown = drive(ssl, fd, until, [&] { return SSL_shutdown(ssl) >= 0 ? 1 : -1; });
    if (shutdown.timed_out) {
        return std::nullopt;
    }

    std::optional<std::string> alert;
    std::size_t drained = 0;
    while (drained < drain_limit) {
        char buffer[4096];
        const auto read = drive(
            ssl, fd, until, [&] { return SSL_read(ssl, buffer, static_cast<int>(sizeof buffer)); });
        if (read.result <= 0) {
            alert = alert_received(read);
            break;
        }
        drained += static_cast<std::size_t>(read.result);
    }
    ERR_clear_error();
    return alert;
}

}  // namespace

int parse_status_line(std::string_view line) {
    if (line.size() < 12 || line.substr(0, 5) != "HTTP/" || line[8] != ' ' ||
        (line.size() > 12 && line[12] != ' ')) {
        return 0;
    }
    int status = 0;
    for (std::size_t i = 9; i < 12; ++i) {
        if (line[i] < '0' || line[i] > '9') {
            return 0;
        }
        status = status * 10 + (line[i] - '0');
    }
    return status >= 100 ? status : 0;
}

bool looks_like_tls_record(std::string_view first_bytes) {
    if (first_bytes.empty()) {
        return false;
    }
    const auto type = static_cast<unsigned char>(first_bytes[0]);
    if (type < 20 || type > 24) {
        return false;
    }
    return first_bytes.size() < 2 || first_bytes[1] == 3;
}

tls_checker::tls_checker(tls_check_options options) : options_(std::move(options)) {}

tls_checker::~tls_checker() {
    SSL_CTX_free(context_);
}

std::optional<probe_outcome> tls_checker::load_trust() {
    SSL_CTX_free(context_);
    context_ = SSL_CTX_new(TLS_client_method());
    if (context_ == nullptr) {
        return probe_outcome{"error", "cannot make a TLS context: " + openssl_error_text()};
    }
    // gh (Go) refuses anything older than TLS 1.2; a server that needs less fails here too.
    SSL_CTX_set_min_proto_version(context_, TLS1_2_VERSION);

    if (!options_.ca_file) {
        if (SSL_CTX_set_default_verify_paths(context_) != 1) {
            return probe_outcome{"ca-missing",
                                 "cannot load the default store: " + openssl_error_text()};
        }
        return std::nullopt;
    }

    const auto& path = *options_.ca_file;
    const auto shown = escape_for_log(path, 200);
    // A directory opens for reading and then reads as empty: name it for what it is.
    struct stat status {};
    const bool is_directory = ::stat(path.c_str(), &status) == 0 && S_ISDIR(status.st_mode);
    errno = 0;
    std::unique_ptr<BIO, decltype(&BIO_free)> file(
        is_directory ? nullptr : BIO_new_file(path.c_str(), "r"), BIO_free);
    if (!file) {
        const int error = is_directory ? EISDIR : errno;
        ERR_clear_error();
        return probe_outcome{"ca-missing", "cannot read CA file " + shown + ": " +
                                               (error != 0 ? std::strerror(error) : "unknown")};
    }
    X509_STORE* store = SSL_CTX_get_cert_store(context_);
    int loaded = 0;
    while (X509* cert = PEM_read_bio_X509(file.get(), nullptr, nullptr, nullptr)) {
        if (X509_STORE_add_cert(store, cert) == 1) {
            ++loaded;
        }
        X509_free(cert);
    }
    ERR_clear_error();
    if (loaded == 0) {
        return probe_outcome{"ca-missing", "no PEM certificate in CA file " + shown};
    }
    return std::nullopt;
}

probe_outcome tls_checker::check(int fd, const std::string& peer, steady::time_point deadline,
                                 const std::string& timeout_text) {
    std::unique_ptr<SSL, decltype(&SSL_free)> owner(SSL_new(context_), SSL_free);
    SSL* ssl = owner.get();
    BIO* bio = ssl != nullptr ? BIO_new_socket(fd, BIO_NOCLOSE) : nullptr;
    if (bio == nullptr) {
        return {"error", "cannot make a TLS session: " + openssl_error_text()};
    }
    session_state state;
    auto& certificates = state.certificates;
    certificates.trust_source = options_.ca_file
                                    ? "CA file " + escape_for_log(*options_.ca_file, 200)
                                    : "the default store";
    certificates.server_name = options_.server_name;
    BIO_set_callback_ex(bio, record_io);
    BIO_set_callback_arg(bio, reinterpret_cast<char*>(&state));
    SSL_set_bio(ssl, bio, bio);
    SSL_set_app_data(ssl, &certificates);
    // Read whole answers at once: a non-TLS peer's first line is then at hand for the detail.
    SSL_set_read_ahead(ssl, 1);

    // As gh does: SNI only for a DNS name, and the name matched against subjectAltNames alone,
    // never the subject's common name.
    in_addr ipv4{};
    const bool is_ip = inet_pton(AF_INET, options_.server_name.c_str(), &ipv4) == 1 ||
                       options_.server_name.find(':') != std::string::npos;
    if (is_ip) {
        X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), options_.server_name.c_str());
    } else {
        SSL_set_tlsext_host_name(ssl, options_.server_name.c_str());
        SSL_set_hostflags(ssl, X509_CHECK_FLAG_NEVER_CHECK_SUBJECT);
        SSL_set1_host(ssl, options_.server_name.c_str());
    }
    SSL_set_verify(ssl, SSL_VERIFY_PEER, record_verify_error);

    const auto handshake = drive(ssl, fd, deadline, [ssl] { return SSL_connect(ssl); });
    if (handshake.timed_out) {
        return {"timeout", "no TLS handshake with " + peer + " within " + timeout_text};
    }
    if (handshake.result <= 0) {
        return handshake_failure(state, handshake, peer);
    }

    auto outcome = verification_failure(certificates).value_or(probe_outcome{"ok", ""});
    const X509* cert = SSL_get0_peer_certificate(ssl);
    if (cert != nullptr) {
        outcome.not_after = to_time_point(X509_get0_notAfter(cert));
    }
    if (outcome.word == "ok") {
        outcome.detail = std::string(SSL_get_version(ssl)) + " with " + peer;
        if (outcome.not_after) {
            const auto left = std::chrono::duration_cast<std::chrono::seconds>(
                *outcome.not_after - std::chrono::system_clock::now());
            outcome.detail += ", certificate valid until " + format_utc(*outcome.not_after) + " (" +
                              format_time_left(left) + " left)";
        }
        if (options_.http_path) {
            auto answer = http_get(ssl, fd, options_, state, peer, deadline, timeout_text);
            if (answer.word == "ok") {
                answer.detail += "; " + outcome.detail;
            }
            answer.not_after = outcome.not_after;
            outcome = std::move(answer);
        }
    }
    if (outcome.word != "reset") {
        const auto alert = close_gracefully(ssl, fd, deadline);
        if (alert && outcome.word == "ok") {
            return {"tls-error", refusal_after_handshake(peer, *alert)};
        }
    }
    return outcome;
}

}  // namespace tcptunnel
