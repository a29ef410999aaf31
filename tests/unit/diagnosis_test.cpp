#include <doctest/doctest.h>

#include <cerrno>

#include "upstream_connect.hpp"

using tcptunnel::diagnosis_word;

namespace {

// A connect error as Asio reports it: an errno in Asio's own system category.
std::error_code asio_errno(int value) {
    return std::error_code(value, asio::error::get_system_category());
}

}  // namespace

TEST_CASE("connect errors name their diagnosis word whichever category carries the errno") {
    CHECK(diagnosis_word({}) == "ok");
    CHECK(diagnosis_word(asio_errno(ECONNREFUSED)) == "refused");
    CHECK(diagnosis_word(asio_errno(ETIMEDOUT)) == "timeout");
    CHECK(diagnosis_word(asio_errno(ECONNRESET)) == "reset");
    for (const int no_route : {ENETUNREACH, EHOSTUNREACH, EADDRNOTAVAIL, EACCES, EINVAL, EPERM}) {
        CAPTURE(no_route);
        CHECK(diagnosis_word(asio_errno(no_route)) == "unreachable");
        CHECK(diagnosis_word(std::error_code(no_route, std::system_category())) == "unreachable");
        CHECK(diagnosis_word(std::make_error_code(std::errc(no_route))) == "unreachable");
    }
    CHECK(diagnosis_word(asio_errno(EMFILE)) == "error");
    // The same number in a category that is not errno's means something else.
    CHECK(diagnosis_word(std::error_code(EACCES, asio::error::get_misc_category())) == "error");
}
