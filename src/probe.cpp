#include "probe.hpp"

#include <csignal>
#include <cstdio>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

#include "certificate_text.hpp"
#include "config.hpp"
#include "duration.hpp"
#include "log.hpp"
#include "upstream_connect.hpp"

namespace tcptunnel {

namespace {

using steady = std::chrono::steady_clock;

// JSON strings: quotes, backslashes and every byte outside printable ASCII escaped, so that the
// line stays valid JSON whatever a peer sent.
void append_json_string(std::string& out, std::string_view value) {
    constexpr char digits[] = "0123456789abcdef";
    out += '"';
    for (unsigned char c : value) {
        if (c == '"' || c == '\\') {
            out += '\\';
            out += static_cast<char>(c);
        } else if (c < 0x20 || c >= 0x7f) {
            out += "\\u00";
            out += digits[c >> 4];
            out += digits[c & 0xf];
        } else {
            out += static_cast<char>(c);
        }
    }
    out += '"';
}

void append_json_field(std::string& out, std::string_view key, std::string_view value) {
    out += ',';
    append_json_string(out, key);
    out += ':';
    append_json_string(out, value);
}

void append_json_number(std::string& out, std::string_view key, long long value) {
    out += ',';
    append_json_string(out, key);
    out += ':';
    out += std::to_string(value);
}

std::string endpoint_text(const tcp::endpoint& endpoint) {
    return format_endpoint(endpoint.address().to_string(), endpoint.port());
}

asio::awaitable<void> connect_into(const endpoint_spec& target, std::chrono::milliseconds timeout,
                                   std::optional<upstream_result>& result) {
    result.emplace(co_await connect_upstream(target, timeout));
}

// Contexts whose attempt ran out of time while Asio's resolver thread may still sit in
// getaddrinfo(): destroying one would join that thread and hold the probe past its deadline.
// They are kept, never run again, until the process exits.
std::vector<std::unique_ptr<asio::io_context>>& abandoned_contexts() {
    static auto* contexts = new std::vector<std::unique_ptr<asio::io_context>>();
    return *contexts;
}

}  // namespace

probe_outcome probe_once(const probe_options& options) {
    const auto deadline = steady::now() + options.timeout;
    const auto target = format_endpoint(options.target);
    const auto timeout_text = format_duration(options.timeout);

    std::optional<tls_checker> checker;
    if (options.tls) {
        checker.emplace(
            tls_check_options{options.server_name, options.ca_file, options.http_path,
                              options.target.port == 443
                                  ? options.server_name
                                  : format_endpoint(options.server_name, options.target.port)});
        if (auto failure = checker->load_trust()) {
            return *failure;
        }
    }

    auto context = std::make_unique<asio::io_context>(1);
    std::optional<upstream_result> connected;
    std::string thrown;
    bool finished = false;
    asio::co_spawn(*context, connect_into(options.target, options.timeout, connected),
                   [&](std::exception_ptr error) {
                       finished = true;
                       if (error) {
                           try {
                               std::rethrow_exception(error);
                           } catch (const std::exception& exception) {
                               thrown = exception.what();
                           }
                       }
                       context->stop();
                   });
    context->run_until(deadline);
    if (!finished) {
        abandoned_contexts().push_back(std::move(context));
        return {"timeout", "not connected to " + target + " within " + timeout_text};
    }
    if (!connected) {
        return {"error", "connecting to " + target + ": " + escape_for_log(thrown, 200)};
    }
    if (!connected->ok()) {
        // The detail names each address tried with its own word; drop the first when it only
        // repeats the verdict ("refused refused 127.0.0.1:9 ...").
        auto detail = connected->detail;
        if (detail.rfind(connected->word + " ", 0) == 0) {
            detail.erase(0, connected->word.size() + 1);
        }
        return {connected->word, detail};
    }

    const auto peer = endpoint_text(connected->endpoint);
    probe_outcome outcome{"ok", "connected to " + peer};
    if (checker) {
        std::error_code error;
        connected->socket.native_non_blocking(true, error);
        if (error) {
            return {"error", "connected to " + peer + ": " + error.message()};
        }
        outcome = checker->check(connected->socket.native_handle(), peer, deadline, timeout_text);
    }
    outcome.address = peer;
    return outcome;
}

std::string render_probe_line(const probe_options& options, const probe_outcome& outcome,
                              unsigned attempt, unsigned max_attempts, bool last,
                              std::chrono::milliseconds retry_in) {
    const auto target = format_endpoint(options.target);
    std::string line;
    if (options.json) {
        line = "{";
        append_json_string(line, "probe");
        line += ':';
        append_json_string(line, target);
        append_json_field(line, "word", outcome.word);
        append_json_field(line, "detail", outcome.detail);
        if (!outcome.address.empty()) {
            append_json_field(line, "address", outcome.address);
        }
        if (outcome.not_after) {
            append_json_field(line, "not_after", format_utc(*outcome.not_after));
        }
        if (outcome.http_status != 0) {
            append_json_number(line, "http_status", outcome.http_status);
        }
        append_json_number(line, "attempt", attempt);
        append_json_number(line, "max_attempts", max_attempts);
        line += last ? ",\"last\":true" : ",\"last\":false";
        if (!last) {
            append_json_number(line, "retry_in_ms", retry_in.count());
        }
        line += "}\n";
        return line;
    }

    line = "probe " + target + " " + outcome.word;
    if (!outcome.detail.empty()) {
        line += " " + outcome.detail;
    }
    if (!last) {
        line += " (attempt " + std::to_string(attempt) + " of " + std::to_string(max_attempts) +
                ", next in " + format_duration(retry_in) + ")";
    } else if (max_attempts > 1) {
        line +=
            " (attempt " + std::to_string(attempt) + " of " + std::to_string(max_attempts) + ")";
    }
    line += '\n';
    return line;
}

int run_probe(const probe_options& options) {
    const unsigned max_attempts = options.retries + 1;
    // --retry-delay-max caps every pause, the first one too.
    const auto longest_delay = options.retry_delay_max;
    auto delay = std::min(options.retry_delay, longest_delay);
    for (unsigned attempt = 1;; ++attempt) {
        const auto outcome = probe_once(options);
        const bool last = outcome.word == "ok" || attempt == max_attempts;

        const auto line = render_probe_line(options, outcome, attempt, max_attempts, last, delay);
        std::fwrite(line.data(), 1, line.size(), stdout);
        std::fflush(stdout);
        if (last) {
            return outcome.word == "ok" ? 0 : 1;
        }

        std::this_thread::sleep_for(delay);
        delay = std::min(delay * 2, longest_delay);
    }
}

int run_probe_command(int argc, const char* const* argv) {
    probe_command_line command;
    try {
        command = parse_probe_command_line(argc, argv);
    } catch (const usage_error& error) {
        std::fprintf(stderr, "tcptunnel: probe: %s\n", error.what());
        return 2;
    }
    if (command.what == probe_command_line::action::print_and_exit) {
        std::fputs(command.output.c_str(), stdout);
        return 0;
    }

    // A server that resets mid-write must give the word "reset", not kill the probe.
    std::signal(SIGPIPE, SIG_IGN);
    return run_probe(command.options);
}

}  // namespace tcptunnel
