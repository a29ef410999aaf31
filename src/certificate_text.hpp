// Certificates, OpenSSL errors and times worded for the probe's one-line detail.
#pragma once

#include <openssl/types.h>

#include <chrono>
#include <optional>
#include <string>

namespace tcptunnel {

// The reason of the most recent OpenSSL error queued on this thread.
std::string openssl_error_text();

// An X.509 name in RFC 2253 form, escaped and capped for a log line.
std::string name_text(const X509_NAME* name);

// An ASN.1 time as a time point; nothing when it cannot be read.
std::optional<std::chrono::system_clock::time_point> to_time_point(const ASN1_TIME* time);

// The certificate's subjectAltNames as "DNS:localhost, IP:127.0.0.1", escaped and capped.
std::string subject_alt_names(const X509* cert);

// "certificate CN=... valid from ... until ..., now ...".
std::string validity_detail(const X509* cert);

// Formats a time as 2026-12-05T14:59:43Z.
std::string format_utc(std::chrono::system_clock::time_point when);

// Formats a remaining time coarsely for people: "2d 3h", "23h 59m", "4m", "12s".
std::string format_time_left(std::chrono::seconds left);

}  // namespace tcptunnel
