#include "probe_options.hpp"

#include <CLI/CLI.hpp>
#include <algorithm>

#include "config.hpp"
#include "duration.hpp"
#include "log.hpp"

namespace tcptunnel {

namespace {

// The path goes into the request line as written: printable ASCII without spaces only.
bool is_valid_http_path(std::string_view path) {
    return !path.empty() && path.size() <= 2048 && path.front() == '/' &&
           std::all_of(path.begin(), path.end(), [](char c) { return c > ' ' && c < 0x7f; });
}

}  // namespace

probe_command_line parse_probe_command_line(int argc, const char* const* argv) {
    probe_command_line result;
    auto& options = result.options;
    std::string target_text = format_endpoint(options.target);
    std::string timeout_text = format_duration(options.timeout);
    std::string retry_delay_text = format_duration(options.retry_delay);
    std::string retry_delay_max_text = format_duration(options.retry_delay_max);
    std::string ca_file;
    std::string http_path;
    std::string format_text = "text";

    CLI::App app{
        "Checks that the upstream answers, as a TCP connection or as the TLS server that "
        "gh expects, and prints one line: probe HOST:PORT WORD detail.",
        "tcptunnel probe"};
    app.set_version_flag("--version", version_text());
    app.footer(
        "Words: ok, dns-nxdomain, dns-temporary, refused, unreachable, timeout, reset, not-tls,\n"
        "ca-missing, tls-untrusted, tls-name-mismatch, tls-expired, tls-not-yet-valid, tls-error,\n"
        "http-NNN, error. Exit status: 0 ok, 1 anything else, 2 a usage error.\n"
        "Options other than --to can also be set as TCPTUNNEL_PROBE_<OPTION>.");
    app.add_option("--to", target_text, "Address to probe: HOST:PORT or [IPV6]:PORT")
        ->capture_default_str()
        ->envname("TCPTUNNEL_TO");
    app.add_flag("--tls", options.tls,
                 "Complete a TLS handshake and verify the certificate (closes with close_notify)")
        ->envname("TCPTUNNEL_PROBE_TLS");
    app.add_option("--ca-cert", ca_file,
                   "PEM file of the CA certificates to trust, and no others (default: the system "
                   "store, or SSL_CERT_FILE / SSL_CERT_DIR)")
        ->envname("TCPTUNNEL_PROBE_CA_CERT");
    app.add_option("--server-name", options.server_name,
                   "Name sent as SNI and looked for among the certificate's subjectAltNames")
        ->capture_default_str()
        ->envname("TCPTUNNEL_PROBE_SERVER_NAME");
    app.add_option("--http-get", http_path,
                   "After the handshake, GET this path and require a 2xx or 3xx status")
        ->envname("TCPTUNNEL_PROBE_HTTP_GET");
    app.add_option("--timeout", timeout_text,
                   "Time allowed for one whole attempt (resolve, connect, TLS, HTTP)")
        ->capture_default_str()
        ->envname("TCPTUNNEL_PROBE_TIMEOUT");
    app.add_option("--retries", options.retries, "Attempts after a failed first one")
        ->capture_default_str()
        ->check(CLI::Range(0u, 100u))
        ->envname("TCPTUNNEL_PROBE_RETRIES");
    app.add_option("--retry-delay", retry_delay_text,
                   "Pause before the first retry; each later pause is twice the one before")
        ->capture_default_str()
        ->envname("TCPTUNNEL_PROBE_RETRY_DELAY");
    app.add_option("--retry-delay-max", retry_delay_max_text, "Longest pause between attempts")
        ->capture_default_str()
        ->envname("TCPTUNNEL_PROBE_RETRY_DELAY_MAX");
    app.add_option("--format", format_text, "Output lines as text or as JSON objects")
        ->capture_default_str()
        ->check(CLI::IsMember({"text", "json"}))
        ->envname("TCPTUNNEL_PROBE_FORMAT");

    if (auto text = parse_or_explain(app, argc, argv, "tcptunnel probe --help")) {
        result.what = probe_command_line::action::print_and_exit;
        result.output = std::move(*text);
        return result;
    }
    const auto named = [&](const char* option) { return value_name(app, argc, argv, option); };

    try {
        options.target = parse_endpoint(target_text);
    } catch (const parse_error& error) {
        throw usage_error(named("--to") + " " + quote_input(target_text) + ": " + error.what() +
                          " (expected HOST:PORT or [IPV6]:PORT)");
    }
    options.timeout = make_duration(named("--timeout"), timeout_text);
    if (options.timeout.count() == 0) {
        throw usage_error(named("--timeout") + " must be more than 0 (expected e.g. 5s)");
    }
    options.retry_delay = make_duration(named("--retry-delay"), retry_delay_text);
    options.retry_delay_max = make_duration(named("--retry-delay-max"), retry_delay_max_text);
    options.json = format_text == "json";

    try {
        options.server_name = parse_endpoint(format_endpoint(options.server_name, 1)).host;
    } catch (const parse_error& error) {
        throw usage_error(named("--server-name") + " " + quote_input(options.server_name) + ": " +
                          error.what() + " (expected a DNS name or an IP address)");
    }
    if (!http_path.empty() && !is_valid_http_path(http_path)) {
        throw usage_error(named("--http-get") + " " + quote_input(http_path) +
                          ": expected a path starting with / and without spaces");
    }

    // Each of these only means something for a TLS probe; silently probing plain TCP instead
    // would report ok for a server that gh cannot use.
    const std::pair<const char*, bool> tls_only[] = {
        {"--ca-cert", app.count("--ca-cert") > 0},
        {"--server-name", app.count("--server-name") > 0},
        {"--http-get", app.count("--http-get") > 0}};
    for (const auto& [option, given] : tls_only) {
        if (given && !options.tls) {
            throw usage_error(std::string(option) + " needs --tls");
        }
    }
    if (app.count("--ca-cert") > 0) {
        if (ca_file.empty()) {
            throw usage_error(named("--ca-cert") + " needs a file name");
        }
        options.ca_file = ca_file;
    }
    if (!http_path.empty()) {
        options.http_path = http_path;
    }
    return result;
}

}  // namespace tcptunnel
