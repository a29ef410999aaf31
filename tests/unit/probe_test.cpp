#include "probe.hpp"

#include <doctest/doctest.h>

#include <cstdlib>
#include <vector>

#include "certificate_text.hpp"
#include "config.hpp"
#include "tls_check.hpp"

using namespace std::chrono_literals;
using tcptunnel::parse_probe_command_line;
using tcptunnel::probe_command_line;
using tcptunnel::probe_options;
using tcptunnel::probe_outcome;
using tcptunnel::render_probe_line;
using tcptunnel::usage_error;

namespace {

probe_command_line parse(std::vector<const char*> args) {
    args.insert(args.begin(), "probe");
    return parse_probe_command_line(static_cast<int>(args.size()), args.data());
}

std::string error_of(std::vector<const char*> args) {
    try {
        parse(std::move(args));
    } catch (const usage_error& error) {
        return error.what();
    }
    return "";
}

probe_options options_for(const char* target) {
    probe_options options;
    options.target = tcptunnel::parse_endpoint(target);
    return options;
}

}  // namespace

TEST_CASE("no arguments probe the tunnel's default upstream over plain TCP") {
    const auto options = parse({}).options;

    CHECK(options.target.host == "host.docker.internal");
    CHECK(options.target.port == 18443);
    CHECK_FALSE(options.tls);
    CHECK_FALSE(options.ca_file);
    CHECK(options.server_name == "localhost");
    CHECK_FALSE(options.http_path);
    CHECK(options.timeout == 5s);
    CHECK(options.retries == 0);
    CHECK(options.retry_delay == 1s);
    CHECK(options.retry_delay_max == 30s);
    CHECK_FALSE(options.json);
}

TEST_CASE("every option is read") {
    const auto options =
        parse({"--to", "[::1]:8443", "--tls", "--ca-cert", "/tmp/proxy-tls/ca.crt", "--server-name",
               "proxy.example", "--http-get", "/api/v3/rate_limit", "--timeout", "500ms",
               "--retries", "3", "--retry-delay", "250ms", "--retry-delay-max", "2s", "--format",
               "json"})
            .options;

    CHECK(options.target.host == "::1");
    CHECK(options.target.port == 8443);
    CHECK(options.tls);
    CHECK(options.ca_file == "/tmp/proxy-tls/ca.crt");
    CHECK(options.server_name == "proxy.example");
    CHECK(options.http_path == "/api/v3/rate_limit");
    CHECK(options.timeout == 500ms);
    CHECK(options.retries == 3);
    CHECK(options.retry_delay == 250ms);
    CHECK(options.retry_delay_max == 2s);
    CHECK(options.json);
}

TEST_CASE("the target comes from TCPTUNNEL_TO when --to is not given, as for the tunnel") {
    ::setenv("TCPTUNNEL_TO", "127.0.0.1:4443", 1);
    const auto from_environment = parse({}).options;
    const auto from_flag = parse({"--to", "127.0.0.1:5443"}).options;
    ::unsetenv("TCPTUNNEL_TO");

    CHECK(from_environment.target.port == 4443);
    CHECK(from_flag.target.port == 5443);
}

TEST_CASE("usage errors name the option and what was expected") {
    CHECK(error_of({"--to", "nowhere"}) ==
          "--to \"nowhere\": missing port (expected HOST:PORT or [IPV6]:PORT)");
    CHECK(error_of({"--timeout", "5"}).rfind("--timeout \"5\": ", 0) == 0);
    CHECK(error_of({"--timeout", "0"}) == "--timeout must be more than 0 (expected e.g. 5s)");
    CHECK(error_of({"--ca-cert", "ca.crt"}) == "--ca-cert needs --tls");
    CHECK(error_of({"--server-name", "localhost"}) == "--server-name needs --tls");
    CHECK(error_of({"--http-get", "/"}) == "--http-get needs --tls");
    CHECK(error_of({"--tls", "--http-get", "api"}) ==
          "--http-get \"api\": expected a path starting with / and without spaces");
    CHECK(error_of({"--tls", "--server-name", "a b"}).rfind("--server-name \"a b\": ", 0) == 0);
    CHECK(error_of({"--format", "xml"}).find("(see tcptunnel probe --help)") != std::string::npos);
    CHECK(error_of({"--verbose"}) == "unknown option --verbose (see tcptunnel probe --help)");
    CHECK(error_of({"extra"}) == "unexpected argument extra (see tcptunnel probe --help)");
}

TEST_CASE("--help is printed, not run") {
    const auto command = parse({"--help"});

    CHECK(command.what == probe_command_line::action::print_and_exit);
    CHECK(command.output.find("--ca-cert") != std::string::npos);
    CHECK(command.output.find("--retry-delay") != std::string::npos);
}

TEST_CASE("a TLS record starts with a content type from 20 to 24 and major version 3") {
    CHECK(tcptunnel::looks_like_tls_record(std::string("\x16\x03\x03\x00\x7a", 5)));
    CHECK(tcptunnel::looks_like_tls_record(std::string("\x15\x03\x01\x00\x02", 5)));
    CHECK(tcptunnel::looks_like_tls_record(std::string("\x16", 1)));
    CHECK_FALSE(tcptunnel::looks_like_tls_record("HTTP/1.1 400 Bad Request\r\n"));
    CHECK_FALSE(tcptunnel::looks_like_tls_record("SSH-2.0-OpenSSH_9.2\r\n"));
    CHECK_FALSE(tcptunnel::looks_like_tls_record(std::string("\x16\x02", 2)));
    CHECK_FALSE(tcptunnel::looks_like_tls_record(""));
}

TEST_CASE("time left is written coarsely in its two largest units") {
    CHECK(tcptunnel::format_time_left(std::chrono::seconds(2 * 86400 + 3 * 3600 + 59)) == "2d 3h");
    CHECK(tcptunnel::format_time_left(std::chrono::seconds(23 * 3600 + 59 * 60 + 30)) == "23h 59m");
    CHECK(tcptunnel::format_time_left(std::chrono::seconds(4 * 60 + 10)) == "4m");
    CHECK(tcptunnel::format_time_left(std::chrono::seconds(12)) == "12s");
    CHECK(tcptunnel::format_time_left(std::chrono::seconds(-5)) == "0s");
}

TEST_CASE("times are written in UTC to the second") {
    const auto when = std::chrono::system_clock::from_time_t(1796396383);

    CHECK(tcptunnel::format_utc(when) == "2026-12-04T14:59:43Z");
}

TEST_CASE("a failed attempt that will be retried says so; the last line carries the verdict") {
    auto options = options_for("host.docker.internal:18443");
    options.retries = 2;
    const probe_outcome refused{"refused", "172.17.0.1:18443 (Connection refused)"};
    const probe_outcome ok{"ok", "connected to 172.17.0.1:18443"};

    CHECK(render_probe_line(options, refused, 1, 3, false, 1s) ==
          "probe host.docker.internal:18443 refused 172.17.0.1:18443 (Connection refused) "
          "(attempt 1 of 3, next in 1s)\n");
    CHECK(render_probe_line(options, ok, 2, 3, true, 2s) ==
          "probe host.docker.internal:18443 ok connected to 172.17.0.1:18443 (attempt 2 of 3)\n");
    options.retries = 0;
    CHECK(render_probe_line(options, ok, 1, 1, true, 1s) ==
          "probe host.docker.internal:18443 ok connected to 172.17.0.1:18443\n");
}

TEST_CASE("the JSON line carries the same verdict and escapes what a peer sent") {
    auto options = options_for("[::1]:443");
    options.json = true;
    probe_outcome outcome{"http-404", "GET /x: HTTP/1.1 404 \"gone\"\x01"};
    outcome.address = "[::1]:443";
    outcome.http_status = 404;
    outcome.not_after = std::chrono::system_clock::from_time_t(1796396383);

    CHECK(render_probe_line(options, outcome, 1, 2, false, 1500ms) ==
          "{\"probe\":\"[::1]:443\",\"word\":\"http-404\",\"detail\":\"GET /x: HTTP/1.1 404 "
          "\\\"gone\\\"\\u0001\",\"address\":\"[::1]:443\",\"not_after\":\"2026-12-04T14:59:43Z\","
          "\"http_status\":404,\"attempt\":1,\"max_attempts\":2,\"last\":false,"
          "\"retry_in_ms\":1500}\n");
}

TEST_CASE("an HTTP status line gives its status; anything else gives 0") {
    CHECK(tcptunnel::parse_status_line("HTTP/1.1 200 OK") == 200);
    CHECK(tcptunnel::parse_status_line("HTTP/1.0 404 Not Found") == 404);
    CHECK(tcptunnel::parse_status_line("HTTP/1.1 301") == 301);
    CHECK(tcptunnel::parse_status_line("HTTP/1.1 099 Low") == 0);
    CHECK(tcptunnel::parse_status_line("HTTP/1.1 2000 OK") == 0);
    CHECK(tcptunnel::parse_status_line("SSH-2.0-OpenSSH_9.0") == 0);
    CHECK(tcptunnel::parse_status_line("") == 0);
}
