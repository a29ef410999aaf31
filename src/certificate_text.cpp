#include "certificate_text.hpp"

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <cstring>
#include <ctime>
#include <memory>

#include "log.hpp"

namespace tcptunnel {

namespace {

std::string time_text(const ASN1_TIME* time) {
    const auto when = to_time_point(time);
    return when ? format_utc(*when) : "(unreadable date)";
}

}  // namespace

std::string openssl_error_text() {
    const auto code = ERR_peek_last_error();
    if (code == 0) {
        return "no OpenSSL error queued";
    }
    if (ERR_SYSTEM_ERROR(code)) {
        return std::strerror(static_cast<int>(ERR_GET_REASON(code)));
    }
    const char* reason = ERR_reason_error_string(code);
    return reason != nullptr ? reason : "OpenSSL error " + std::to_string(code);
}

std::string name_text(const X509_NAME* name) {
    std::unique_ptr<BIO, decltype(&BIO_free)> out(BIO_new(BIO_s_mem()), BIO_free);
    if (!out || X509_NAME_print_ex(out.get(), name, 0, XN_FLAG_RFC2253) < 0) {
        return "?";
    }
    char* data = nullptr;
    const long length = BIO_get_mem_data(out.get(), &data);
    return escape_for_log(std::string_view(data, static_cast<std::size_t>(length)), 120);
}

std::optional<std::chrono::system_clock::time_point> to_time_point(const ASN1_TIME* time) {
    std::tm parts{};
    if (time == nullptr || ASN1_TIME_to_tm(time, &parts) != 1) {
        return std::nullopt;
    }
    return std::chrono::system_clock::from_time_t(timegm(&parts));
}

std::string subject_alt_names(const X509* cert) {
    std::unique_ptr<GENERAL_NAMES, decltype(&GENERAL_NAMES_free)> names(
        static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr)),
        GENERAL_NAMES_free);
    if (!names || sk_GENERAL_NAME_num(names.get()) == 0) {
        return "none (no subjectAltName)";
    }
    std::string list;
    for (int i = 0; i < sk_GENERAL_NAME_num(names.get()); ++i) {
        const GENERAL_NAME* name = sk_GENERAL_NAME_value(names.get(), i);
        std::string entry;
        if (name->type == GEN_DNS) {
            const auto* text = name->d.dNSName;
            entry = "DNS:" + std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(text)),
                                         static_cast<std::size_t>(ASN1_STRING_length(text)));
        } else if (name->type == GEN_IPADD) {
            const auto* octets = name->d.iPAddress;
            const int length = ASN1_STRING_length(octets);
            char text[INET6_ADDRSTRLEN] = "?";
            if (length == 4 || length == 16) {
                inet_ntop(length == 4 ? AF_INET : AF_INET6, ASN1_STRING_get0_data(octets), text,
                          sizeof text);
            }
            entry = std::string("IP:") + text;
        } else if (name->type == GEN_EMAIL) {
            entry = "email";
        } else if (name->type == GEN_URI) {
            entry = "URI";
        } else {
            entry = "other";
        }
        list += (list.empty() ? "" : ", ") + entry;
    }
    return escape_for_log(list, 400);
}

std::string validity_detail(const X509* cert) {
    return "certificate " + name_text(X509_get_subject_name(cert)) + " valid from " +
           time_text(X509_get0_notBefore(cert)) + " until " + time_text(X509_get0_notAfter(cert)) +
           ", now " + format_utc(std::chrono::system_clock::now());
}

std::string format_utc(std::chrono::system_clock::time_point when) {
    const std::time_t time = std::chrono::system_clock::to_time_t(when);
    std::tm parts{};
    gmtime_r(&time, &parts);
    char text[32];
    const auto length = std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &parts);
    return std::string(text, length);
}

std::string format_time_left(std::chrono::seconds left) {
    const long long total = std::max<long long>(0, left.count());
    const long long days = total / 86400;
    const long long hours = total % 86400 / 3600;
    const long long minutes = total % 3600 / 60;
    if (days > 0) {
        return std::to_string(days) + "d " + std::to_string(hours) + "h";
    }
    if (hours > 0) {
        return std::to_string(hours) + "h " + std::to_string(minutes) + "m";
    }
    if (minutes > 0) {
        return std::to_string(minutes) + "m";
    }
    return std::to_string(total) + "s";
}

}  // namespace tcptunnel
