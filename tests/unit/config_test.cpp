#include "config.hpp"

#include <doctest/doctest.h>

#include <cstdlib>
#include <vector>

using namespace std::chrono_literals;
using tcptunnel::command_line;
using tcptunnel::parse_command_line;
using tcptunnel::usage_error;

namespace {

command_line parse(std::vector<const char*> args) {
    args.insert(args.begin(), "tcptunnel");
    return parse_command_line(static_cast<int>(args.size()), args.data());
}

std::string error_of(std::vector<const char*> args) {
    try {
        parse(std::move(args));
    } catch (const usage_error& error) {
        return error.what();
    }
    return "";
}

const std::string legacy_usage =
    "(usage: tcptunnel LOCAL_PORT REMOTE_HOST REMOTE_PORT [BIND_HOST], or tcptunnel --help)";

}  // namespace

TEST_CASE("no arguments give the container's defaults") {
    const auto config = parse({}).config;

    REQUIRE(config.listen.size() == 1);
    CHECK(config.listen[0].endpoint.host == "localhost");
    CHECK(config.listen[0].endpoint.port == 18443);
    CHECK(config.listen[0].display == "localhost:18443");
    CHECK(config.upstream.host == "host.docker.internal");
    CHECK(config.upstream.port == 18443);
    CHECK(config.connect_timeout == 10s);
    CHECK(config.drain_timeout == 1500ms);
}

TEST_CASE("options set listeners, upstream, timeouts and logging") {
    const auto config =
        parse({"--listen", "0.0.0.0:1", "--listen", "[::]:2", "--listen", "3", "--to",
               "tcp://[::1]:4", "--connect-timeout", "500ms", "--drain-timeout", "0",
               "--log-format", "json", "--log-level", "debug"})
            .config;

    REQUIRE(config.listen.size() == 3);
    CHECK(config.listen[0].display == "0.0.0.0:1");
    CHECK(config.listen[1].display == "[::]:2");
    CHECK(config.listen[2].display == "localhost:3");
    CHECK(config.upstream_display == "[::1]:4");
    CHECK(config.connect_timeout == 500ms);
    CHECK(config.drain_timeout == 0ms);
    CHECK(config.format == tcptunnel::log_format::json);
    CHECK(config.level == tcptunnel::log_level::debug);
}

TEST_CASE("the positional form keeps the old script's arguments and ready-line names") {
    const auto plain = parse({"18443", "host.docker.internal", "443"}).config;
    const auto bound = parse({"8080", "example.test", "80", "0.0.0.0"}).config;

    CHECK(plain.listen[0].display == "localhost:18443");
    CHECK(plain.listen[0].endpoint.host == "localhost");
    CHECK(plain.upstream_display == "host.docker.internal:443");
    CHECK(bound.listen[0].display == "0.0.0.0:8080");
    CHECK(bound.listen[0].endpoint.host == "0.0.0.0");
}

TEST_CASE("positional-form mistakes give one line with the usage") {
    CHECK(error_of({"1", "2"}) == "expected 3 or 4 arguments, got 2 " + legacy_usage);
    CHECK(error_of({"70000", "h", "1"}) ==
          "LOCAL_PORT \"70000\": port out of range 1-65535 " + legacy_usage);
    CHECK(error_of({"1", "h", "x"}) ==
          "REMOTE_HOST \"h\" REMOTE_PORT \"x\": port is not a number " + legacy_usage);
    CHECK(error_of({"1", "h", "1", "a b"}) ==
          "BIND_HOST \"a b\": host has characters not allowed in a name or IP address " +
              legacy_usage);
}

TEST_CASE("option mistakes give one line saying what was expected") {
    CHECK(error_of({"--listen", "host:"}) ==
          "--listen \"host:\": missing port (expected HOST:PORT, [IPV6]:PORT or PORT)");
    CHECK(error_of({"--to", "nohost"}) ==
          "--to \"nohost\": missing port (expected HOST:PORT or [IPV6]:PORT)");
    CHECK(error_of({"--connect-timeout", "10"}) ==
          "--connect-timeout \"10\": duration needs a unit: ms, s, m or h "
          "(expected a duration such as 500ms, 10s or 2m)");
    CHECK(error_of({"--connect-timeout", "0s"}) ==
          "--connect-timeout must be more than 0 (expected e.g. 10s)");
    CHECK(error_of({"--bogus"}) == "unknown option --bogus (see tcptunnel --help)");
    CHECK(error_of({"--log-level", "loud"}).find("--log-level") != std::string::npos);
}

TEST_CASE("peer-controlled bytes in a bad argument are escaped in the error line") {
    CHECK(error_of({"--to", "a\nb"}) ==
          "--to \"a\\x0ab\": missing port (expected HOST:PORT or [IPV6]:PORT)");
}

TEST_CASE("TCPTUNNEL_* environment variables supply options") {
    ::setenv("TCPTUNNEL_TO", "127.0.0.1:9", 1);
    ::setenv("TCPTUNNEL_LISTEN", "127.0.0.1:1,[::1]:2", 1);
    ::setenv("TCPTUNNEL_CONNECT_TIMEOUT", "3s", 1);

    const auto config = parse({}).config;
    const auto overridden = parse({"--to", "127.0.0.1:10"}).config;

    ::unsetenv("TCPTUNNEL_TO");
    ::unsetenv("TCPTUNNEL_LISTEN");
    ::unsetenv("TCPTUNNEL_CONNECT_TIMEOUT");
    CHECK(config.upstream_display == "127.0.0.1:9");
    REQUIRE(config.listen.size() == 2);
    CHECK(config.listen[1].display == "[::1]:2");
    CHECK(config.connect_timeout == 3s);
    CHECK(overridden.upstream_display == "127.0.0.1:10");
}

TEST_CASE("--help and --version print and exit") {
    const auto help = parse({"--help"});
    const auto version = parse({"--version"});

    CHECK(help.what == command_line::action::print_and_exit);
    CHECK(help.output.find("--connect-timeout") != std::string::npos);
    CHECK(help.output.find("=10s") != std::string::npos);
    CHECK(version.output.find("asio 1.") != std::string::npos);
    CHECK(version.output.find("OpenSSL 3") != std::string::npos);
}
