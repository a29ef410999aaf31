#include "config.hpp"

#include <openssl/opensslv.h>

#include <CLI/CLI.hpp>
#include <asio/version.hpp>
#include <cstdlib>
#include <cstring>

#include "build_info.hpp"
#include "duration.hpp"

namespace tcptunnel {

std::string quote_input(std::string_view text) {
    return "\"" + escape_for_log(text, 80) + "\"";
}

std::chrono::milliseconds make_duration(const std::string& option, const std::string& text) {
    try {
        return parse_duration(text);
    } catch (const parse_error& error) {
        throw usage_error(option + " " + quote_input(text) + ": " + error.what() +
                          " (expected a duration such as 500ms, 10s or 2m)");
    }
}

namespace {

constexpr const char* legacy_usage =
    "usage: tcptunnel LOCAL_PORT REMOTE_HOST REMOTE_PORT [BIND_HOST], or tcptunnel --help";

listen_spec make_listen_spec(const std::string& option, const std::string& text) {
    try {
        listen_spec spec;
        spec.endpoint = parse_endpoint(text, "localhost", true);
        spec.display = format_endpoint(spec.endpoint);
        return spec;
    } catch (const parse_error& error) {
        throw usage_error(option + " " + quote_input(text) + ": " + error.what() +
                          " (expected HOST:PORT, [IPV6]:PORT or PORT)");
    }
}

// CLI11 reads unsigned options with strtoull, which takes "-1" as the largest value and "010" as
// octal: a count must be written in plain decimal digits, without a leading zero.
const CLI::Validator decimal_count(
    [](std::string& text) {
        const bool digits = !text.empty() && std::all_of(text.begin(), text.end(), [](char c) {
            return c >= '0' && c <= '9';
        });
        const bool decimal = digits && (text == "0" || text[0] != '0');
        if (!decimal) {
            return quote_input(text) + " is not a decimal whole number (expected e.g. 100)";
        }
        // strtoull would wrap a value past its range without a word.
        if (text.size() > 9) {
            return quote_input(text) + " is too large (expected at most 999999999)";
        }
        return std::string();
    },
    "");

// The old script's form: LOCAL_PORT REMOTE_HOST REMOTE_PORT [BIND_HOST].
command_line parse_legacy_form(int argc, const char* const* argv) {
    for (int i = 2; i < argc; ++i) {
        if (argv[i][0] == '-' && argv[i][1] == '-') {
            throw usage_error("option " + quote_input(argv[i]) +
                              " after a positional argument (options go with --listen and --to "
                              "instead of the positional form; see tcptunnel --help)");
        }
    }
    if (argc < 4 || argc > 5) {
        throw usage_error(std::string("expected 3 or 4 arguments, got ") +
                          std::to_string(argc - 1) + " (" + legacy_usage + ")");
    }
    const std::string local_port = argv[1];
    const std::string remote_host = argv[2];
    const std::string remote_port = argv[3];
    const std::string bind_host = argc == 5 ? argv[4] : "localhost";

    command_line result;
    auto& config = result.config;
    listen_spec listen;
    try {
        listen.endpoint.port = parse_port(local_port);
    } catch (const parse_error& error) {
        throw usage_error("LOCAL_PORT " + quote_input(local_port) + ": " + error.what() + " (" +
                          legacy_usage + ")");
    }
    try {
        config.upstream = parse_endpoint(format_endpoint(remote_host, parse_port(remote_port)));
    } catch (const parse_error& error) {
        throw usage_error("REMOTE_HOST " + quote_input(remote_host) + " REMOTE_PORT " +
                          quote_input(remote_port) + ": " + error.what() + " (" + legacy_usage +
                          ")");
    }
    try {
        listen.endpoint.host = parse_endpoint(format_endpoint(bind_host, 1)).host;
    } catch (const parse_error& error) {
        throw usage_error("BIND_HOST " + quote_input(bind_host) + ": " + error.what() + " (" +
                          legacy_usage + ")");
    }

    // The ready line is a contract with the scripts that wait for it: hosts exactly as given.
    listen.display = bind_host + ":" + local_port;
    config.upstream_display = remote_host + ":" + remote_port;
    config.listen.push_back(std::move(listen));
    return result;
}

}  // namespace

std::string value_name(const CLI::App& app, int argc, const char* const* argv,
                       const std::string& option) {
    const CLI::Option* known = app.get_option_no_throw(option);
    if (known == nullptr || known->get_envname().empty()) {
        return option;
    }
    for (int i = 1; i < argc; ++i) {
        const std::string_view argument = argv[i];
        if (argument == option || argument.substr(0, option.size() + 1) == option + "=") {
            return option;
        }
    }
    const char* variable = std::getenv(known->get_envname().c_str());
    return variable != nullptr && *variable != '\0' ? known->get_envname() : option;
}

std::optional<std::string> parse_or_explain(CLI::App& app, int argc, const char* const* argv,
                                            const std::string& help_command) {
    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp&) {
        return app.help();
    } catch (const CLI::CallForVersion&) {
        return version_text() + "\n";
    } catch (const CLI::ExtrasError&) {
        // CLI11's own text spans several words and lines; name the first stray argument.
        const auto extras = app.remaining();
        const auto first = extras.empty() ? std::string("argument") : extras.front();
        const bool is_option = !first.empty() && first.front() == '-';
        throw usage_error((is_option ? "unknown option " : "unexpected argument ") +
                          escape_for_log(first, 80) + " (see " + help_command + ")");
    } catch (const CLI::ParseError& error) {
        std::string message = error.what();
        std::replace(message.begin(), message.end(), '\n', ' ');
        // CLI11 starts a bad value's line with the option's name.
        const auto name_end = message.find(':');
        if (message.rfind("--", 0) == 0 && name_end != std::string::npos) {
            const auto option = message.substr(0, name_end);
            auto problem = message.substr(name_end);
            if (problem.find("At Most 1 required") != std::string::npos) {
                problem = ": given more than once (expected it once)";
            }
            message = value_name(app, argc, argv, option) + problem;
        }
        throw usage_error(message + " (see " + help_command + ")");
    }
    return std::nullopt;
}

std::string version_text() {
    std::string text = "tcptunnel ";
    text += build_info::version;
    text += " (asio ";
    text += build_info::asio_version;
    text += ", ";
    text += OPENSSL_VERSION_TEXT;
    text += build_info::static_link ? ", static)" : ", dynamic)";
    return text;
}

command_line parse_command_line(int argc, const char* const* argv) {
    if (argc >= 2 && argv[1][0] != '-' && argv[1][0] != '\0') {
        return parse_legacy_form(argc, argv);
    }

    command_line result;
    auto& config = result.config;
    std::vector<std::string> listen_texts;
    std::string upstream_text = "host.docker.internal:18443";
    std::string connect_timeout_text = format_duration(config.connect_timeout);
    std::string drain_timeout_text = format_duration(config.drain_timeout);
    std::string idle_timeout_text = "0";
    std::string half_close_timeout_text = "0";
    std::string splice_text = "auto";
    std::vector<std::string> allow_from_texts;
    std::vector<std::string> sni_names;
    std::string hello_timeout_text = format_duration(config.admission.hello_timeout);
    std::string level_text = "info";
    std::string format_text = "text";

    CLI::App app{"Relays TCP connections from local listeners to one upstream address.",
                 "tcptunnel"};
    app.set_version_flag("--version", version_text());
    app.footer(
        "Also: tcptunnel LOCAL_PORT REMOTE_HOST REMOTE_PORT [BIND_HOST] (the positional form),\n"
        "      tcptunnel probe --help (health check).\n"
        "Every option can also be set as TCPTUNNEL_<OPTION>, e.g. TCPTUNNEL_CONNECT_TIMEOUT=5s.");
    app.add_option("--listen", listen_texts,
                   "Address to listen on: HOST:PORT, [IPV6]:PORT or PORT (repeatable; "
                   "localhost means 127.0.0.1 and ::1; port 0 picks a free port)")
        ->default_str("localhost:18443")
        ->allow_extra_args(false)
        ->envname("TCPTUNNEL_LISTEN")
        ->delimiter(',');
    app.add_option("--to", upstream_text, "Upstream address: HOST:PORT or [IPV6]:PORT")
        ->capture_default_str()
        ->envname("TCPTUNNEL_TO");
    app.add_option("--connect-timeout", connect_timeout_text,
                   "Time allowed for each upstream connection attempt")
        ->capture_default_str()
        ->envname("TCPTUNNEL_CONNECT_TIMEOUT");
    app.add_option("--drain-timeout", drain_timeout_text,
                   "On SIGTERM/SIGINT, time open connections get to finish before they are closed")
        ->capture_default_str()
        ->envname("TCPTUNNEL_DRAIN_TIMEOUT");
    app.add_option("--idle-timeout", idle_timeout_text,
                   "Close a connection after this long with no bytes either way (0: never)")
        ->capture_default_str()
        ->envname("TCPTUNNEL_IDLE_TIMEOUT");
    app.add_option("--half-close-timeout", half_close_timeout_text,
                   "Close a connection this long after one side ended its sending half while the "
                   "other stays open (0: never)")
        ->capture_default_str()
        ->envname("TCPTUNNEL_HALF_CLOSE_TIMEOUT");
    app.add_option("--max-connections", config.max_connections,
                   "Open connections at most; more clients wait in the listen backlog "
                   "(0: derived from the open-files limit, 2 descriptors a connection)")
        ->capture_default_str()
        ->check(decimal_count)
        ->envname("TCPTUNNEL_MAX_CONNECTIONS");
    app.add_option("--threads", config.threads,
                   "Worker threads, each with its own event loop and SO_REUSEPORT listeners")
        ->capture_default_str()
        ->check(decimal_count)
        ->check(CLI::Range(1u, 64u))
        ->envname("TCPTUNNEL_THREADS");
    app.add_option("--splice", splice_text,
                   "Zero-copy splice(2) data path: auto (for bulk transfers), always or never")
        ->capture_default_str()
        ->check(CLI::IsMember({"auto", "always", "never"}))
        ->envname("TCPTUNNEL_SPLICE");
    app.add_option("--allow-from", allow_from_texts,
                   "Serve only clients from these networks: CIDR[,CIDR...] (repeatable; "
                   "default: every client)")
        ->allow_extra_args(false)
        ->envname("TCPTUNNEL_ALLOW_FROM");
    app.add_flag("--require-tls", config.admission.require_tls,
                 "Forward only connections whose first bytes are a well-formed TLS ClientHello")
        ->envname("TCPTUNNEL_REQUIRE_TLS");
    app.add_option("--sni", sni_names,
                   "With --require-tls (implied): the ClientHello's server name must be one of "
                   "these (repeatable)")
        ->allow_extra_args(false)
        ->delimiter(',')
        ->envname("TCPTUNNEL_SNI");
    app.add_option("--hello-timeout", hello_timeout_text,
                   "With --require-tls: time a client gets to send its whole ClientHello")
        ->capture_default_str()
        ->envname("TCPTUNNEL_HELLO_TIMEOUT");
    app.add_option("--log-level", level_text, "Least severe log lines written")
        ->capture_default_str()
        ->check(CLI::IsMember({"error", "warn", "info", "debug"}))
        ->envname("TCPTUNNEL_LOG_LEVEL");
    app.add_option("--log-format", format_text, "Log line format on stderr")
        ->capture_default_str()
        ->check(CLI::IsMember({"text", "json"}))
        ->envname("TCPTUNNEL_LOG_FORMAT");

    if (auto text = parse_or_explain(app, argc, argv, "tcptunnel --help")) {
        result.what = command_line::action::print_and_exit;
        result.output = std::move(*text);
        return result;
    }
    const auto named = [&](const char* option) { return value_name(app, argc, argv, option); };

    if (listen_texts.empty()) {
        listen_texts.push_back("localhost:18443");
    }
    for (const auto& text : listen_texts) {
        auto spec = make_listen_spec(named("--listen"), text);
        // Two listeners on one address would fail to bind, blaming the machine for a typo.
        for (const auto& earlier : config.listen) {
            if (spec.endpoint.port != 0 && earlier.endpoint.host == spec.endpoint.host &&
                earlier.endpoint.port == spec.endpoint.port) {
                throw usage_error(named("--listen") + " " + quote_input(text) +
                                  ": listed twice (expected each address once)");
            }
        }
        config.listen.push_back(std::move(spec));
    }
    try {
        config.upstream = parse_endpoint(upstream_text);
        config.upstream_display = format_endpoint(config.upstream);
    } catch (const parse_error& error) {
        throw usage_error(named("--to") + " " + quote_input(upstream_text) + ": " + error.what() +
                          " (expected HOST:PORT or [IPV6]:PORT)");
    }
    config.connect_timeout = make_duration(named("--connect-timeout"), connect_timeout_text);
    if (config.connect_timeout.count() == 0) {
        throw usage_error(named("--connect-timeout") + " must be more than 0 (expected e.g. 10s)");
    }
    config.drain_timeout = make_duration(named("--drain-timeout"), drain_timeout_text);
    config.idle_timeout = make_duration(named("--idle-timeout"), idle_timeout_text);
    config.half_close_timeout =
        make_duration(named("--half-close-timeout"), half_close_timeout_text);
    for (const auto& text : allow_from_texts) {
        try {
            config.admission.allow_from.merge(parse_access_list(text));
        } catch (const parse_error& error) {
            throw usage_error(named("--allow-from") + " " + quote_input(text) + ": " +
                              error.what() +
                              " (expected CIDR[,CIDR...], e.g. 172.30.0.0/24,fd00::/64)");
        }
    }
    for (auto name : sni_names) {
        std::transform(name.begin(), name.end(), name.begin(),
                       [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
        const bool valid =
            !name.empty() && name.size() <= 253 &&
            std::all_of(name.begin(), name.end(), [](char c) {
                return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '-';
            });
        if (!valid) {
            throw usage_error(named("--sni") + " " + quote_input(name) +
                              ": not a host name (expected letters, digits, '.' and '-')");
        }
        config.admission.allowed_names.push_back(name);
        config.admission.require_tls = true;
    }
    config.admission.hello_timeout = make_duration(named("--hello-timeout"), hello_timeout_text);
    if (config.admission.hello_timeout.count() == 0) {
        throw usage_error(named("--hello-timeout") + " must be more than 0 (expected e.g. 3s)");
    }
    config.splice = splice_text == "always"  ? splice_mode::always
                    : splice_text == "never" ? splice_mode::never
                                             : splice_mode::automatic;

    static constexpr std::pair<const char*, log_level> levels[] = {{"error", log_level::error},
                                                                   {"warn", log_level::warn},
                                                                   {"info", log_level::info},
                                                                   {"debug", log_level::debug}};
    for (const auto& [name, level] : levels) {
        if (level_text == name) {
            config.level = level;
        }
    }
    config.format = format_text == "json" ? log_format::json : log_format::text;
    return result;
}

}  // namespace tcptunnel
