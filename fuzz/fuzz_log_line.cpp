// Fuzzes the log renderer with values a peer or a resolver could produce. A text line is printable
// ASCII ending in one newline, and each key=value reads back to the value (cut at the cap); a JSON
// line is one valid JSON object whose strings decode back to the values. escape_for_log alone is
// checked the same way with a cap taken from the input.
#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "fuzz_check.hpp"
#include "log.hpp"

namespace {

using tcptunnel::log_field;
using tcptunnel::log_format;
using tcptunnel::log_level;

constexpr std::size_t value_cap = 256;  // the renderer's cap on each value

std::string capped(std::string_view value, std::size_t cap) {
    std::string expected(value.substr(0, cap));
    if (value.size() > cap) {
        expected += "...";
    }
    return expected;
}

int hex_digit(char c) {
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

// Reverses escape_for_log: \\, \" and \xNN; any other backslash sequence is an error.
std::optional<std::string> unescape_text(std::string_view text) {
    std::string out;
    for (std::size_t i = 0; i < text.size(); ++i) {
        if (text[i] != '\\') {
            out += text[i];
            continue;
        }
        if (i + 1 >= text.size()) {
            return std::nullopt;
        }
        const char kind = text[++i];
        if (kind == '\\' || kind == '"') {
            out += kind;
        } else if (kind == 'x' && i + 2 < text.size() && hex_digit(text[i + 1]) >= 0 &&
                   hex_digit(text[i + 2]) >= 0) {
            out += static_cast<char>(hex_digit(text[i + 1]) * 16 + hex_digit(text[i + 2]));
            i += 2;
        } else {
            return std::nullopt;
        }
    }
    return out;
}

// A reader for exactly what a JSON log line may hold: one object of string keys whose values are
// strings or integers. Strings decode \u00NN to the byte NN.
class json_line_reader {
  public:
    explicit json_line_reader(std::string_view text) : text_(text) {}

    // The members in order, or nullopt when the text is not one such object and a newline.
    std::optional<std::vector<std::pair<std::string, std::string>>> read() {
        std::vector<std::pair<std::string, std::string>> members;
        if (!take('{')) {
            return std::nullopt;
        }
        do {
            auto key = read_string();
            if (!key || !take(':')) {
                return std::nullopt;
            }
            auto value = peek() == '"' ? read_string() : read_integer();
            if (!value) {
                return std::nullopt;
            }
            members.emplace_back(std::move(*key), std::move(*value));
        } while (take(','));
        if (!take('}') || !take('\n') || position_ != text_.size()) {
            return std::nullopt;
        }
        return members;
    }

  private:
    char peek() const { return position_ < text_.size() ? text_[position_] : '\0'; }

    bool take(char c) {
        if (position_ >= text_.size() || text_[position_] != c) {
            return false;
        }
        ++position_;
        return true;
    }

    std::optional<std::string> read_string() {
        if (!take('"')) {
            return std::nullopt;
        }
        std::string out;
        while (position_ < text_.size()) {
            const auto c = static_cast<unsigned char>(text_[position_++]);
            if (c == '"') {
                return out;
            }
            if (c < 0x20) {
                return std::nullopt;
            }
            if (c != '\\') {
                out += static_cast<char>(c);
                continue;
            }
            const char kind = peek();
            ++position_;
            if (kind == '"' || kind == '\\' || kind == '/') {
                out += kind;
            } else if (kind == 'u' && position_ + 4 <= text_.size()) {
                int code = 0;
                for (int i = 0; i < 4; ++i) {
                    const int digit = hex_digit(text_[position_++]);
                    if (digit < 0) {
                        return std::nullopt;
                    }
                    code = code * 16 + digit;
                }
                if (code > 0xff) {
                    return std::nullopt;
                }
                out += static_cast<char>(code);
            } else {
                return std::nullopt;
            }
        }
        return std::nullopt;
    }

    std::optional<std::string> read_integer() {
        const auto start = position_;
        take('-');
        const auto digits = position_;
        while (peek() >= '0' && peek() <= '9') {
            ++position_;
        }
        const auto count = position_ - digits;
        if (count == 0 || (count > 1 && text_[digits] == '0')) {
            return std::nullopt;
        }
        return std::string(text_.substr(start, position_ - start));
    }

    std::string_view text_;
    std::size_t position_ = 0;
};

struct expected_field {
    std::string key;
    std::string value;  // as the reader decodes it
};

void check_json_line(std::string_view line, std::string_view event,
                     const std::vector<expected_field>& fields) {
    const auto members = json_line_reader(line).read();
    FUZZ_CHECK(members.has_value());
    FUZZ_CHECK(members->size() == 3 + fields.size());
    FUZZ_CHECK((*members)[0].first == "time");
    FUZZ_CHECK((*members)[1].first == "level");
    FUZZ_CHECK((*members)[2].first == "event" && (*members)[2].second == event);
    for (std::size_t i = 0; i < fields.size(); ++i) {
        FUZZ_CHECK((*members)[3 + i].first == fields[i].key);
        FUZZ_CHECK((*members)[3 + i].second == fields[i].value);
    }
}

// Text: "<time> <level> <event>" then " key=value" for each field, a value quoted when it holds
// a space, a quote, an equals sign or a backslash.
void check_text_line(std::string_view line, std::string_view event,
                     const std::vector<expected_field>& fields) {
    FUZZ_CHECK(line.ends_with('\n'));
    line.remove_suffix(1);

    const auto time_end = line.find(' ');
    FUZZ_CHECK(time_end != std::string_view::npos);
    const auto level_end = line.find(' ', time_end + 1);
    FUZZ_CHECK(level_end != std::string_view::npos);
    auto rest = line.substr(level_end + 1);
    FUZZ_CHECK(rest.substr(0, event.size()) == event);
    rest.remove_prefix(event.size());

    for (const auto& field : fields) {
        const auto prefix = " " + field.key + "=";
        FUZZ_CHECK(rest.starts_with(prefix));
        rest.remove_prefix(prefix.size());

        std::string_view written;
        if (rest.starts_with('"')) {
            std::size_t end = 1;
            while (end < rest.size() && rest[end] != '"') {
                end += rest[end] == '\\' ? 2 : 1;
            }
            FUZZ_CHECK(end < rest.size());
            written = rest.substr(1, end - 1);
            rest.remove_prefix(end + 1);
        } else {
            written = rest.substr(0, rest.find(' '));
            FUZZ_CHECK(!written.empty());
            FUZZ_CHECK(written.find_first_of("\"=\\") == std::string_view::npos);
            rest.remove_prefix(written.size());
        }
        FUZZ_CHECK(unescape_text(written) == field.value);
    }
    FUZZ_CHECK(rest.empty());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 2) {
        return 0;
    }
    constexpr std::array<std::string_view, 4> events = {"close", "open", "upstream_failed",
                                                        "accept_failed"};
    constexpr std::array<log_level, 4> levels = {log_level::error, log_level::warn, log_level::info,
                                                 log_level::debug};
    const auto format = (data[0] & 1) != 0 ? log_format::json : log_format::text;
    const auto event = events[(data[0] >> 1) & 3];
    const auto level = levels[(data[0] >> 3) & 3];
    const std::size_t escape_cap = data[1];
    auto values = tcptunnel::fuzz::split_on_nul(tcptunnel::fuzz::as_text(data + 2, size - 2), 4);
    values.resize(4);

    const auto escaped = tcptunnel::escape_for_log(values[0], escape_cap);
    FUZZ_CHECK(tcptunnel::fuzz::is_printable_ascii(escaped));
    FUZZ_CHECK(unescape_text(escaped) == capped(values[0], escape_cap));

    const std::uint64_t count = static_cast<std::uint64_t>(size) * 0x9e3779b97f4a7c15ull;
    const std::int64_t delta = -static_cast<std::int64_t>(size) * 1'000'003;
    const auto when = std::chrono::system_clock::time_point(std::chrono::milliseconds(
        1'796'000'000'000LL + static_cast<long long>(data[1]) * 86'399'999LL));
    const auto line = tcptunnel::render_log_line(format, when, level, event,
                                                 {{"client", values[0]},
                                                  {"detail", values[1]},
                                                  {"bytes", count},
                                                  {"delta", delta},
                                                  {"host", values[2]},
                                                  {"reason", values[3]}});

    FUZZ_CHECK(line.ends_with('\n'));
    const auto body = std::string_view(line).substr(0, line.size() - 1);
    FUZZ_CHECK(tcptunnel::fuzz::is_printable_ascii(body));
    const std::vector<expected_field> fields = {
        {"client", capped(values[0], value_cap)}, {"detail", capped(values[1], value_cap)},
        {"bytes", std::to_string(count)},         {"delta", std::to_string(delta)},
        {"host", capped(values[2], value_cap)},   {"reason", capped(values[3], value_cap)},
    };
    if (format == log_format::json) {
        check_json_line(line, event, fields);
    } else {
        check_text_line(line, event, fields);
    }
    return 0;
}
