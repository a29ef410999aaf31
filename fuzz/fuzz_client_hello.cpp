// Fuzzes the ClientHello inspector with the bytes a client could send first. Every inspection,
// of the whole input and of its prefixes, gets a buffer of exactly the bytes it may read, so
// that ASan reports any read past them. Besides memory safety it checks the header's promises:
// - the verdict and its fields agree: a loggable reason exactly for the refusals, a server name
//   only with ok, lower-case [a-z0-9.-], at most max_server_name_length, and read from the bytes;
// - ok only once the whole first record has arrived: one byte less is need_more;
// - a verdict other than need_more is final: a prefix that is decided has the whole input's
//   verdict, appended bytes of any value change nothing, and nothing past the largest record a
//   client may send is looked at.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "client_hello.hpp"
#include "fuzz_check.hpp"

namespace {

using tcptunnel::hello_info;
using tcptunnel::hello_verdict;

// Inspects a copy of the first length bytes held in an allocation of exactly that size.
hello_info inspect(const std::uint8_t* data, std::size_t length) {
    const std::vector<std::byte> bytes(reinterpret_cast<const std::byte*>(data),
                                       reinterpret_cast<const std::byte*>(data) + length);
    return tcptunnel::inspect_client_hello(bytes);
}

bool same(const hello_info& a, const hello_info& b) {
    return a.verdict == b.verdict && a.reason == b.reason && a.has_sni == b.has_sni &&
           a.sni == b.sni;
}

void check_consistent(const hello_info& info) {
    const auto name = tcptunnel::to_string(info.verdict);
    FUZZ_CHECK(name == "need-more" || name == "ok" || name == "not-tls" || name == "malformed" ||
               name == "too-large");

    const bool refused =
        info.verdict != hello_verdict::ok && info.verdict != hello_verdict::need_more;
    FUZZ_CHECK(refused == !info.reason.empty());
    FUZZ_CHECK(tcptunnel::fuzz::is_printable_ascii(info.reason));

    if (info.verdict != hello_verdict::ok) {
        FUZZ_CHECK(!info.has_sni && info.sni.empty());
    }
    FUZZ_CHECK(info.has_sni == !info.sni.empty());
    FUZZ_CHECK(info.sni.size() <= tcptunnel::max_server_name_length);
    for (const char c : info.sni) {
        FUZZ_CHECK((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '-');
    }
}

// True when the name, case aside, occurs in the bytes (it was read from them, not made up).
bool occurs_in(std::string_view name, const std::uint8_t* data, std::size_t size) {
    for (std::size_t at = 0; at + name.size() <= size; ++at) {
        std::size_t i = 0;
        while (i < name.size()) {
            auto c = static_cast<char>(data[at + i]);
            if (c >= 'A' && c <= 'Z') {
                c = static_cast<char>(c - 'A' + 'a');
            }
            if (c != name[i]) {
                break;
            }
            ++i;
        }
        if (i == name.size()) {
            return true;
        }
    }
    return false;
}

// The prefix lengths to compare with the whole input: all of them for a short input, otherwise
// the record header's edges, a spread of cut points, and the last few bytes.
std::vector<std::size_t> prefix_lengths(std::size_t size) {
    std::vector<std::size_t> lengths;
    if (size <= 96) {
        for (std::size_t length = 0; length < size; ++length) {
            lengths.push_back(length);
        }
        return lengths;
    }
    for (std::size_t length = 0; length <= tcptunnel::tls_record_header_size + 4; ++length) {
        lengths.push_back(length);
    }
    constexpr std::size_t spread = 24;
    for (std::size_t step = 1; step < spread; ++step) {
        lengths.push_back(size * step / spread);
    }
    for (std::size_t back = 1; back <= 4; ++back) {
        lengths.push_back(size - back);
    }
    return lengths;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto whole = inspect(data, size);
    check_consistent(whole);

    for (const auto length : prefix_lengths(size)) {
        const auto prefix = inspect(data, length);
        check_consistent(prefix);
        if (prefix.verdict != hello_verdict::need_more) {
            FUZZ_CHECK(same(prefix, whole));
        }
    }

    if (whole.verdict == hello_verdict::ok) {
        FUZZ_CHECK(size >= tcptunnel::tls_record_header_size);
        const std::size_t record_end =
            tcptunnel::tls_record_header_size + (static_cast<std::size_t>(data[3]) << 8) + data[4];
        FUZZ_CHECK(record_end <= size);
        FUZZ_CHECK(same(inspect(data, record_end), whole));
        FUZZ_CHECK(inspect(data, record_end - 1).verdict == hello_verdict::need_more);
        FUZZ_CHECK(occurs_in(whole.sni, data, record_end));
    }

    if (whole.verdict != hello_verdict::need_more) {
        for (const std::uint8_t extra : {0x00, 0x16, 0xff}) {
            std::vector<std::uint8_t> longer(data, data + size);
            longer.push_back(extra);
            FUZZ_CHECK(same(inspect(longer.data(), longer.size()), whole));
        }
    }

    if (size > tcptunnel::max_client_hello_bytes) {
        FUZZ_CHECK(same(inspect(data, tcptunnel::max_client_hello_bytes), whole));
    }
    return 0;
}
