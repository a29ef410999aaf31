// Fuzzes the probe's parser of the status line an HTTP server sends: against a reference written
// another way (a regular expression for "HTTP/" + three more bytes + a space + three digits, then
// the end or a space; a status only from 100), and stable under anything appended after such a
// space.
#include <regex>
#include <string>
#include <string_view>

#include "fuzz_check.hpp"
#include "tls_check.hpp"

namespace {

int reference_status(const std::string& line) {
    // Only the first 13 bytes decide (the status line, then the end or a space), which also keeps
    // the recursive regex engine off long inputs. [\s\S] is any byte, line ends included.
    static const std::regex status_line(R"(HTTP/[\s\S]{3} ([0-9]{3}) ?)");
    const std::string head = line.substr(0, 13);
    std::smatch match;
    if (!std::regex_match(head, match, status_line)) {
        return 0;
    }
    const int status = std::stoi(match[1].str());
    return status >= 100 ? status : 0;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    // An exact-size copy, so that ASan sees any read past the line.
    const std::string line(tcptunnel::fuzz::as_text(data, size));

    const int status = tcptunnel::parse_status_line(line);

    FUZZ_CHECK(status == reference_status(line));
    FUZZ_CHECK(status == 0 || (status >= 100 && status <= 999));
    if (status != 0) {
        FUZZ_CHECK(tcptunnel::parse_status_line(line.substr(0, 12) + " reason") == status);
    }
    return 0;
}
