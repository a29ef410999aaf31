// The TLS half of `tcptunnel probe`: a client handshake over an already connected socket,
// certificate checks as gh makes them, an optional HTTP GET, and a one-word diagnosis.
#pragma once

#include <openssl/types.h>

#include <chrono>
#include <optional>
#include <string>
#include <string_view>

namespace tcptunnel {

// How one probe attempt (or one of its steps) turned out.
struct probe_outcome {
    probe_outcome() = default;
    probe_outcome(std::string diagnosis, std::string explanation)
        : word(std::move(diagnosis)), detail(std::move(explanation)) {}

    std::string word;     // a probe diagnosis word (DESIGN.md), e.g. "ok", "tls-expired"
    std::string detail;   // for people; anything a peer sent is escaped and capped
    std::string address;  // the address connected to, when a connection was made
    std::optional<std::chrono::system_clock::time_point> not_after;  // the server certificate's
    int http_status = 0;                                             // 0: no HTTP status read
};

// What the handshake must check.
struct tls_check_options {
    std::string server_name;               // SNI and the name a subjectAltName must match
    std::optional<std::string> ca_file;    // when set, the only trusted certificates
    std::optional<std::string> http_path;  // GET this after the handshake
    std::string http_host;                 // the Host header of that GET
};

// A TLS client configuration with its trust loaded. Not thread-safe.
class tls_checker {
  public:
    explicit tls_checker(tls_check_options options);
    ~tls_checker();
    tls_checker(const tls_checker&) = delete;
    tls_checker& operator=(const tls_checker&) = delete;

    // Reads the trusted certificates: the CA file alone when one was given, otherwise the default
    // store (which SSL_CERT_FILE and SSL_CERT_DIR override). Returns a "ca-missing" outcome when
    // the file cannot be read or holds no PEM certificate, and nothing when trust is loaded.
    std::optional<probe_outcome> load_trust();

    // Runs a TLS handshake over the connected socket `fd` (made non-blocking by the caller), then
    // the HTTP GET if asked, all before `deadline`. After a completed handshake it always sends
    // close_notify and reads until the server closes too (briefly), so that the server sees an
    // orderly TLS close and never a handshake error. `peer` and `timeout_text` only word the
    // detail. Leaves `fd` open. Requires a successful load_trust() first.
    probe_outcome check(int fd, const std::string& peer,
                        std::chrono::steady_clock::time_point deadline,
                        const std::string& timeout_text);

  private:
    tls_check_options options_;
    SSL_CTX* context_ = nullptr;
};

// The status of an HTTP/1.x status line such as "HTTP/1.1 404 Not Found" (read from a peer), or
// 0 when the line is not one: "HTTP/", a version, a space, three digits from 100, then the end or
// a space.
int parse_status_line(std::string_view line);

// True when the first bytes a peer sent could start a TLS record (content type 20-24, major
// version 3); false for anything else, such as an HTTP answer or an SSH banner.
bool looks_like_tls_record(std::string_view first_bytes);

}  // namespace tcptunnel
