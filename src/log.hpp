// The line logger: one event a line on stderr, as text (key=value) or JSON.
#pragma once

#include <chrono>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>

namespace tcptunnel {

enum class log_level { error = 0, warn = 1, info = 2, debug = 3 };
enum class log_format { text, json };

// One key and its value; numbers are written unquoted in JSON.
struct log_field {
    log_field(std::string_view k, std::string_view v) : key(k), value(v) {}
    log_field(std::string_view k, const std::string& v) : key(k), value(v) {}
    log_field(std::string_view k, const char* v) : key(k), value(v) {}
    log_field(std::string_view k, std::uint64_t v)
        : key(k), value(std::to_string(v)), is_number(true) {}
    log_field(std::string_view k, std::int64_t v)
        : key(k), value(std::to_string(v)), is_number(true) {}
    log_field(std::string_view k, int v) : key(k), value(std::to_string(v)), is_number(true) {}
    log_field(std::string_view k, unsigned v) : key(k), value(std::to_string(v)), is_number(true) {}

    std::string_view key;
    std::string value;
    bool is_number = false;
};

// Sets the process-wide level and format; call once at start-up, before any thread starts.
void configure_logging(log_level level, log_format format);

// True when a line at this level would be written (to skip building fields that nobody reads).
bool log_enabled(log_level level);

// Writes one line with a single write(2), so lines from several threads never interleave.
// Values are escaped (control bytes, quotes, non-ASCII) and capped in length.
void log_event(log_level level, std::string_view event, std::initializer_list<log_field> fields);

// Renders a line without writing it (used by log_event and by the tests).
std::string render_log_line(log_format format, std::chrono::system_clock::time_point when,
                            log_level level, std::string_view event,
                            std::initializer_list<log_field> fields);

// Escapes a value for a text log: printable ASCII stays, everything else becomes \xNN, and
// the result is cut at max_length bytes of input with a trailing "...".
std::string escape_for_log(std::string_view value, std::size_t max_length = 256);

std::string_view to_string(log_level level);

// Folds repeated events of one kind: at most one line per interval, each carrying the number
// of events it stands for. Not thread-safe: one per io_context.
class log_rate_limiter {
  public:
    explicit log_rate_limiter(
        std::chrono::steady_clock::duration interval = std::chrono::seconds(1))
        : interval_(interval) {}

    // Counts an event; returns the number of events the line should stand for (this one and those
    // suppressed since the last line), or 0 when the line should be suppressed.
    std::uint64_t admit(std::chrono::steady_clock::time_point now);

    // Events counted since the last admitted line (for a final line at exit).
    std::uint64_t suppressed() const { return suppressed_; }

  private:
    std::chrono::steady_clock::duration interval_;
    std::chrono::steady_clock::time_point last_line_{};
    std::uint64_t suppressed_ = 0;
    bool any_line_ = false;
};

}  // namespace tcptunnel
