// Fuzzes the probe's parser of the status line an HTTP server sends: against a plain reference
// (a status only for "HTTP/" + three more bytes + a space + three digits of at least 100, then the
// end or a space), and stable under anything appended after such a space.
#include <string>
#include <string_view>

#include "fuzz_check.hpp"
#include "tls_check.hpp"

namespace {

int reference_status(std::string_view line) {
    if (line.size() < 12 || line.compare(0, 5, "HTTP/") != 0 || line[8] != ' ') {
        return 0;
    }
    if (line.size() > 12 && line[12] != ' ') {
        return 0;
    }
    int status = 0;
    for (std::size_t i = 9; i < 12; ++i) {
        if (line[i] < '0' || line[i] > '9') {
            return 0;
        }
        status = status * 10 + (line[i] - '0');
    }
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
