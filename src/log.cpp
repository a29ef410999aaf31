#include "log.hpp"

#include <poll.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <ctime>

namespace tcptunnel {

namespace {

std::atomic<log_level> current_level{log_level::info};
std::atomic<log_format> current_format{log_format::text};

// Lines left out because stderr could not take them; the next line that gets through says so.
std::atomic<std::uint64_t> dropped_lines{0};

void append_hex_escape(std::string& out, unsigned char c, std::string_view prefix) {
    constexpr char digits[] = "0123456789abcdef";
    out += prefix;
    out += digits[c >> 4];
    out += digits[c & 0xf];
}

void append_timestamp(std::string& out, std::chrono::system_clock::time_point when) {
    const auto since_epoch = when.time_since_epoch();
    const auto seconds = std::chrono::duration_cast<std::chrono::seconds>(since_epoch);
    const auto millis =
        std::chrono::duration_cast<std::chrono::milliseconds>(since_epoch - seconds);
    const std::time_t time = static_cast<std::time_t>(seconds.count());
    std::tm parts{};
    gmtime_r(&time, &parts);

    char text[40];
    const auto length = std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%S", &parts);
    out.append(text, length);
    char fraction[8];
    std::snprintf(fraction, sizeof fraction, ".%03dZ", static_cast<int>(millis.count()));
    out += fraction;
}

bool needs_quotes(std::string_view value) {
    if (value.empty()) {
        return true;
    }
    for (char c : value) {
        if (c == ' ' || c == '"' || c == '=' || c == '\\') {
            return true;
        }
    }
    return false;
}

// JSON strings: escape quotes, backslashes and every byte outside printable ASCII as \u00NN,
// so the line stays valid JSON whatever bytes a peer or a resolver produced.
void append_json_string(std::string& out, std::string_view value, std::size_t max_length) {
    out += '"';
    const auto shown = value.substr(0, max_length);
    for (unsigned char c : shown) {
        if (c == '"' || c == '\\') {
            out += '\\';
            out += static_cast<char>(c);
        } else if (c < 0x20 || c >= 0x7f) {
            append_hex_escape(out, c, "\\u00");
        } else {
            out += static_cast<char>(c);
        }
    }
    if (value.size() > max_length) {
        out += "...";
    }
    out += '"';
}

}  // namespace

void configure_logging(log_level level, log_format format) {
    current_level.store(level);
    current_format.store(format);
}

bool log_enabled(log_level level) {
    return static_cast<int>(level) <= static_cast<int>(current_level.load());
}

std::string_view to_string(log_level level) {
    switch (level) {
        case log_level::error:
            return "error";
        case log_level::warn:
            return "warn";
        case log_level::info:
            return "info";
        case log_level::debug:
            return "debug";
    }
    return "info";
}

std::string escape_for_log(std::string_view value, std::size_t max_length) {
    std::string out;
    out.reserve(std::min(value.size(), max_length) + 8);
    for (unsigned char c : value.substr(0, max_length)) {
        if (c == '\\' || c == '"') {
            out += '\\';
            out += static_cast<char>(c);
        } else if (c < 0x20 || c >= 0x7f) {
            append_hex_escape(out, c, "\\x");
        } else {
            out += static_cast<char>(c);
        }
    }
    if (value.size() > max_length) {
        out += "...";
    }
    return out;
}

std::string render_log_line(log_format format, std::chrono::system_clock::time_point when,
                            log_level level, std::string_view event,
                            std::initializer_list<log_field> fields) {
    constexpr std::size_t max_value_length = 256;
    std::string line;
    line.reserve(160);

    if (format == log_format::json) {
        line += "{\"time\":\"";
        append_timestamp(line, when);
        line += "\",\"level\":\"";
        line += to_string(level);
        line += "\",\"event\":";
        append_json_string(line, event, max_value_length);
        for (const auto& field : fields) {
            line += ',';
            append_json_string(line, field.key, max_value_length);
            line += ':';
            if (field.is_number) {
                line += field.value;
            } else {
                append_json_string(line, field.value, max_value_length);
            }
        }
        line += "}\n";
        return line;
    }

    append_timestamp(line, when);
    line += ' ';
    line += to_string(level);
    line += ' ';
    line += escape_for_log(event, max_value_length);
    for (const auto& field : fields) {
        line += ' ';
        line += field.key;
        line += '=';
        const auto escaped = escape_for_log(field.value, max_value_length);
        if (!field.is_number && needs_quotes(escaped)) {
            line += '"';
            line += escaped;
            line += '"';
        } else {
            line += escaped;
        }
    }
    line += '\n';
    return line;
}

namespace {

// Whether stderr can take a line now. A log reader that stalls (a full pipe, a paused terminal)
// must not stall the relay and the signal handling that share this thread, so a line it cannot
// take is dropped and counted instead of waited for. A pipe that polls writable has room for at
// least PIPE_BUF bytes, more than a log line with its capped values.
// Limitation: threads that find the same last room at once may still wait for the reader.
bool stderr_has_room() {
    pollfd target{STDERR_FILENO, POLLOUT, 0};
    int ready = 0;
    do {
        ready = ::poll(&target, 1, 0);
    } while (ready < 0 && errno == EINTR);
    // An error or hang-up counts as room: the write then fails at once.
    return ready != 0;
}

// One write per line; a short write to a pipe happens only beyond PIPE_BUF, and a line that long
// is still written whole by the loop, at worst next to another thread's line.
void write_line(const std::string& line) {
    std::size_t written = 0;
    while (written < line.size()) {
        const auto result = ::write(STDERR_FILENO, line.data() + written, line.size() - written);
        if (result < 0 && errno == EINTR) {
            continue;
        }
        if (result <= 0) {
            return;
        }
        written += static_cast<std::size_t>(result);
    }
}

}  // namespace

void log_event(log_level level, std::string_view event, std::initializer_list<log_field> fields) {
    if (!log_enabled(level)) {
        return;
    }
    if (!stderr_has_room()) {
        dropped_lines.fetch_add(1, std::memory_order_relaxed);
        return;
    }

    const auto format = current_format.load();
    const auto now = std::chrono::system_clock::now();
    // A plain load first: the exchange would make every line of every thread write the counter.
    if (dropped_lines.load(std::memory_order_relaxed) > 0) {
        // Another thread may have taken the count since.
        if (const auto dropped = dropped_lines.exchange(0, std::memory_order_relaxed);
            dropped > 0) {
            write_line(
                render_log_line(format, now, log_level::warn, "log_lines_dropped",
                                {{"count", dropped}, {"detail", "stderr was not being read"}}));
        }
    }
    write_line(render_log_line(format, now, level, event, fields));
}

std::uint64_t log_rate_limiter::admit(std::chrono::steady_clock::time_point now) {
    ++suppressed_;
    if (any_line_ && now - last_line_ < interval_) {
        return 0;
    }
    any_line_ = true;
    last_line_ = now;
    const auto count = suppressed_;
    suppressed_ = 0;
    return count;
}

}  // namespace tcptunnel
