#include "client_hello.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <vector>

using tcptunnel::hello_info;
using tcptunnel::hello_verdict;
using tcptunnel::inspect_client_hello;

namespace {

using bytes = std::vector<std::byte>;

const std::filesystem::path corpus_dir = TCPTUNNEL_HELLO_CORPUS;

bytes load(const std::string& name) {
    std::ifstream file(corpus_dir / name, std::ios::binary);
    REQUIRE_MESSAGE(file, "cannot read " << (corpus_dir / name).string());
    const std::vector<char> chars((std::istreambuf_iterator<char>(file)),
                                  std::istreambuf_iterator<char>());
    bytes data(chars.size());
    std::transform(chars.begin(), chars.end(), data.begin(),
                   [](char c) { return static_cast<std::byte>(c); });
    return data;
}

bytes from_text(std::string_view text) {
    bytes data;
    for (const char c : text) {
        data.push_back(static_cast<std::byte>(c));
    }
    return data;
}

void put(bytes& out, std::size_t value, std::size_t width) {
    for (std::size_t i = width; i-- > 0;) {
        out.push_back(static_cast<std::byte>((value >> (8 * i)) & 0xff));
    }
}

void append(bytes& out, const bytes& tail) {
    out.insert(out.end(), tail.begin(), tail.end());
}

hello_info inspect(const bytes& data) {
    return inspect_client_hello(data);
}

hello_info inspect_prefix(const bytes& data, std::size_t size) {
    return inspect_client_hello(std::span(data).first(size));
}

struct extension {
    std::uint16_t type;
    bytes body;
    int length_delta = 0;  // added to the length field as written
};

// The body of a server_name extension holding the given names, each of type name_type.
bytes server_name_body(const std::vector<std::string_view>& names, int list_delta = 0,
                       std::uint8_t name_type = 0, int name_delta = 0) {
    bytes entries;
    for (const auto name : names) {
        entries.push_back(static_cast<std::byte>(name_type));
        put(entries, name.size() + name_delta, 2);
        append(entries, from_text(name));
    }
    bytes body;
    put(body, entries.size() + list_delta, 2);
    append(body, entries);
    return body;
}

// A synthetic ClientHello record in which every length field can be made to lie by a delta.
struct hello_builder {
    std::uint8_t record_type = 0x16;
    std::uint16_t record_version = 0x0301;
    std::uint8_t handshake_type = 0x01;
    std::uint16_t version = 0x0303;
    std::size_t session_id_size = 32;
    std::size_t cipher_suites_size = 4;
    std::size_t compression_methods_size = 1;
    bool with_extensions = true;
    std::vector<extension> extensions = {
        {0x0000, server_name_body({"localhost"})},
        {0x002b, {std::byte{2}, std::byte{3}, std::byte{4}}},
    };
    int record_delta = 0;
    int handshake_delta = 0;
    int session_id_delta = 0;
    int cipher_suites_delta = 0;
    int compression_methods_delta = 0;
    int extensions_delta = 0;

    bytes build() const {
        bytes body;
        put(body, version, 2);
        body.insert(body.end(), 32, std::byte{0x5a});
        put(body, session_id_size + session_id_delta, 1);
        body.insert(body.end(), session_id_size, std::byte{0x11});
        put(body, cipher_suites_size + cipher_suites_delta, 2);
        for (std::size_t i = 0; i < cipher_suites_size; ++i) {
            body.push_back(std::byte{0x13});
        }
        put(body, compression_methods_size + compression_methods_delta, 1);
        body.insert(body.end(), compression_methods_size, std::byte{0});
        if (with_extensions) {
            bytes list;
            for (const auto& item : extensions) {
                put(list, item.type, 2);
                put(list, item.body.size() + item.length_delta, 2);
                append(list, item.body);
            }
            put(body, list.size() + extensions_delta, 2);
            append(body, list);
        }

        bytes handshake;
        put(handshake, handshake_type, 1);
        put(handshake, body.size() + handshake_delta, 3);
        append(handshake, body);

        bytes record;
        put(record, record_type, 1);
        put(record, record_version, 2);
        put(record, handshake.size() + record_delta, 2);
        append(record, handshake);
        return record;
    }
};

hello_builder with_server_name(bytes body) {
    hello_builder builder;
    builder.extensions[0].body = std::move(body);
    return builder;
}

const std::vector<std::string> captured = {
    "openssl-s_client-servername-localhost.bin",
    "openssl-s_client-tls1_2-servername-localhost.bin",
    "openssl-s_client-servername-evil-example.bin",
    "openssl-s_client-noservername.bin",
    "curl-https-localhost.bin",
    "curl-tls1_2-https-localhost.bin",
    "gh-api-localhost.bin",
};

}  // namespace

TEST_CASE("real ClientHellos from openssl, curl and gh are accepted with their server name") {
    struct expectation {
        std::string file;
        bool has_sni;
        std::string sni;
    };
    const std::vector<expectation> expected = {
        {"openssl-s_client-servername-localhost.bin", true, "localhost"},
        {"openssl-s_client-tls1_2-servername-localhost.bin", true, "localhost"},
        {"openssl-s_client-servername-evil-example.bin", true, "evil.example"},
        {"openssl-s_client-noservername.bin", false, ""},
        {"curl-https-localhost.bin", true, "localhost"},
        {"curl-tls1_2-https-localhost.bin", true, "localhost"},
        {"gh-api-localhost.bin", true, "localhost"},
    };

    for (const auto& capture : expected) {
        CAPTURE(capture.file);

        const auto info = inspect(load(capture.file));

        CHECK(info.verdict == hello_verdict::ok);
        CHECK(info.reason.empty());
        CHECK(info.has_sni == capture.has_sni);
        CHECK(info.sni == capture.sni);
    }
}

TEST_CASE("every truncation of a real ClientHello asks for more bytes") {
    for (const auto& file : captured) {
        CAPTURE(file);
        const auto hello = load(file);

        for (std::size_t size = 0; size < hello.size(); ++size) {
            CAPTURE(size);
            const auto info = inspect_prefix(hello, size);
            REQUIRE(info.verdict == hello_verdict::need_more);
            CHECK(info.reason.empty());
            CHECK_FALSE(info.has_sni);
        }
    }
}

TEST_CASE("bytes after the first record are ignored") {
    auto hello = load("gh-api-localhost.bin");
    const auto change_cipher_spec = bytes{std::byte{0x14}, std::byte{0x03}, std::byte{0x03},
                                          std::byte{0x00}, std::byte{0x01}, std::byte{0x01}};
    auto followed = hello;
    append(followed, change_cipher_spec);
    auto flooded = hello;
    flooded.insert(flooded.end(), 40000, std::byte{0xff});

    CHECK(inspect(followed).verdict == hello_verdict::ok);
    CHECK(inspect(flooded).verdict == hello_verdict::ok);
    CHECK(inspect(flooded).sni == "localhost");
    CHECK(inspect(load("hello-then-change-cipher-spec.bin")).verdict == hello_verdict::ok);
}

TEST_CASE("plain text, HTTP, SSH and SSLv2 are not TLS, from their first byte") {
    for (const auto text :
         {"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", "G", "SSH-2.0-OpenSSH_9.2\r\n", "\r\n",
          "\x16\x02", "\x16\x03\x05", "\x16\x04\x01\x00\x10"}) {
        CAPTURE(text);

        const auto info = inspect(from_text(text));

        CHECK(info.verdict == hello_verdict::not_tls);
        CHECK_FALSE(info.reason.empty());
    }
    CHECK(inspect(load("sslv2-compatible-hello.bin")).verdict == hello_verdict::not_tls);
    CHECK(inspect(load("plain-http-get.bin")).verdict == hello_verdict::not_tls);
    CHECK(inspect(load("ssh-banner.bin")).verdict == hello_verdict::not_tls);
    CHECK(inspect(bytes{}).verdict == hello_verdict::need_more);
    CHECK(inspect(bytes{std::byte{0x16}, std::byte{0x03}}).verdict == hello_verdict::need_more);
}

TEST_CASE("a record longer than 16384 bytes is too large as soon as its header arrives") {
    auto header = from_text("\x16\x03\x01");
    put(header, 16385, 2);
    auto largest = header;
    largest[4] = std::byte{0xff};
    largest[3] = std::byte{0xff};

    CHECK(inspect(header).verdict == hello_verdict::too_large);
    CHECK(inspect(largest).verdict == hello_verdict::too_large);
    CHECK(inspect(load("record-too-large.bin")).verdict == hello_verdict::too_large);
}

TEST_CASE("a ClientHello filling a record of exactly 16384 bytes is accepted") {
    hello_builder builder;
    const auto base_size = builder.build().size() - 5;
    builder.extensions.push_back({0x0015, bytes(16384 - base_size - 4, std::byte{0})});
    const auto hello = builder.build();
    REQUIRE(hello.size() == 5 + 16384);

    const auto info = inspect(hello);

    CHECK(info.verdict == hello_verdict::ok);
    CHECK(info.sni == "localhost");
    CHECK(inspect_prefix(hello, hello.size() - 1).verdict == hello_verdict::need_more);
}

TEST_CASE("a ClientHello spread over two records is too large") {
    const auto info = inspect(load("hello-split-across-two-records.bin"));

    CHECK(info.verdict == hello_verdict::too_large);
    CHECK(info.reason == "ClientHello spans more than one record");
}

TEST_CASE("each length field that is one too long or too short is refused") {
    struct variant {
        const char* what;
        hello_builder builder;
        hello_verdict verdict;
    };
    const auto lie = [](auto field, int delta) {
        hello_builder builder;
        builder.*field = delta;
        return builder;
    };
    std::vector<variant> variants = {
        {"record +1", lie(&hello_builder::record_delta, 1), hello_verdict::malformed},
        {"record -1", lie(&hello_builder::record_delta, -1), hello_verdict::too_large},
        {"handshake +1", lie(&hello_builder::handshake_delta, 1), hello_verdict::too_large},
        {"handshake -1", lie(&hello_builder::handshake_delta, -1), hello_verdict::malformed},
        {"session id +1", lie(&hello_builder::session_id_delta, 1), hello_verdict::malformed},
        {"session id -1", lie(&hello_builder::session_id_delta, -1), hello_verdict::malformed},
        {"cipher suites +1", lie(&hello_builder::cipher_suites_delta, 1), hello_verdict::malformed},
        {"cipher suites -1", lie(&hello_builder::cipher_suites_delta, -1),
         hello_verdict::malformed},
        {"cipher suites +2", lie(&hello_builder::cipher_suites_delta, 2), hello_verdict::malformed},
        {"cipher suites -2", lie(&hello_builder::cipher_suites_delta, -2),
         hello_verdict::malformed},
        {"compression +1", lie(&hello_builder::compression_methods_delta, 1),
         hello_verdict::malformed},
        {"compression -1", lie(&hello_builder::compression_methods_delta, -1),
         hello_verdict::malformed},
        {"extensions +1", lie(&hello_builder::extensions_delta, 1), hello_verdict::malformed},
        {"extensions -1", lie(&hello_builder::extensions_delta, -1), hello_verdict::malformed},
    };
    for (int delta : {1, -1}) {
        for (std::size_t index : {0, 1}) {
            hello_builder builder;
            builder.extensions[index].length_delta = delta;
            variants.push_back({"extension length", builder, hello_verdict::malformed});
        }
        variants.push_back({"server name list",
                            with_server_name(server_name_body({"localhost"}, delta)),
                            hello_verdict::malformed});
        variants.push_back({"server name",
                            with_server_name(server_name_body({"localhost"}, 0, 0, delta)),
                            hello_verdict::malformed});
    }

    for (const auto& lying : variants) {
        CAPTURE(lying.what);

        const auto info = inspect(lying.builder.build());

        CHECK(info.verdict == lying.verdict);
        CHECK_FALSE(info.reason.empty());
        CHECK_FALSE(info.has_sni);
        CHECK(info.sni.empty());
    }
}

TEST_CASE("inconsistent records and fixed fields are malformed with a reason") {
    hello_builder not_hello;
    not_hello.handshake_type = 0x02;
    hello_builder old_version;
    old_version.version = 0x0200;
    hello_builder long_session_id;
    long_session_id.session_id_size = 33;
    hello_builder odd_suites;
    odd_suites.cipher_suites_size = 3;
    hello_builder no_suites;
    no_suites.cipher_suites_size = 0;
    hello_builder no_compression;
    no_compression.compression_methods_size = 0;

    CHECK(inspect(from_text(std::string("\x16\x03\x01\x00\x00", 5))).reason == "empty record");
    CHECK(inspect(from_text(std::string("\x16\x03\x01\x00\x03\x01\x00\x00", 8))).reason ==
          "handshake header cut by the record's end");
    CHECK(inspect(not_hello.build()).reason == "handshake message is not a ClientHello");
    CHECK(inspect(old_version.build()).reason == "ClientHello version is not TLS");
    CHECK(inspect(long_session_id.build()).reason == "session id longer than 32 bytes");
    CHECK(inspect(odd_suites.build()).reason == "cipher suite list empty or of odd length");
    CHECK(inspect(no_suites.build()).reason == "cipher suite list empty or of odd length");
    CHECK(inspect(no_compression.build()).reason == "no compression method");
    CHECK(inspect(load("record-empty.bin")).verdict == hello_verdict::malformed);
    CHECK(inspect(load("handshake-not-client-hello.bin")).verdict == hello_verdict::malformed);
    CHECK(inspect(load("session-id-length-33.bin")).verdict == hello_verdict::malformed);
    CHECK(inspect(load("extensions-length-minus-one.bin")).verdict == hello_verdict::malformed);
    for (const auto& builder :
         {not_hello, old_version, long_session_id, odd_suites, no_suites, no_compression}) {
        CHECK(inspect(builder.build()).verdict == hello_verdict::malformed);
    }
}

TEST_CASE("a malformed field is refused before the rest of the record arrives") {
    hello_builder long_session_id;
    long_session_id.session_id_size = 200;
    const auto hello = long_session_id.build();
    const auto bad_name = with_server_name(server_name_body({"local_host"})).build();

    CHECK(inspect_prefix(hello, 5 + 4 + 2 + 32).verdict == hello_verdict::need_more);
    CHECK(inspect_prefix(hello, 5 + 4 + 2 + 32 + 1).verdict == hello_verdict::malformed);
    CHECK(inspect_prefix(bad_name, bad_name.size() - 7).verdict == hello_verdict::malformed);
}

TEST_CASE("a ClientHello without a server name is accepted without one") {
    hello_builder no_sni;
    no_sni.extensions.erase(no_sni.extensions.begin());
    hello_builder no_extensions;
    no_extensions.with_extensions = false;
    hello_builder empty_extensions;
    empty_extensions.extensions.clear();

    for (const auto& builder : {no_sni, no_extensions, empty_extensions}) {
        const auto info = inspect(builder.build());

        CHECK(info.verdict == hello_verdict::ok);
        CHECK_FALSE(info.has_sni);
        CHECK(info.sni.empty());
    }
    CHECK_FALSE(inspect(load("openssl-s_client-noservername.bin")).has_sni);
}

TEST_CASE("an upper-case server name is reported in lower case") {
    const auto info = inspect(with_server_name(server_name_body({"LocalHost.Example"})).build());

    CHECK(info.verdict == hello_verdict::ok);
    CHECK(info.has_sni);
    CHECK(info.sni == "localhost.example");
    CHECK(inspect(load("sni-uppercase.bin")).sni == "localhost");
}

TEST_CASE("a server name with a byte outside [a-z0-9.-] is malformed") {
    for (const auto name : {std::string_view("local_host"), std::string_view("local host"),
                            std::string_view("localhost\n"), std::string_view("a\0b", 3),
                            std::string_view("caf\xc3\xa9"), std::string_view("evil/x"),
                            std::string_view("host:443")}) {
        CAPTURE(name);

        const auto info = inspect(with_server_name(server_name_body({name})).build());

        CHECK(info.verdict == hello_verdict::malformed);
        CHECK(info.reason == "server name has a byte outside [a-z0-9.-]");
        CHECK(info.sni.empty());
    }
    CHECK(inspect(load("sni-bad-char.bin")).verdict == hello_verdict::malformed);
}

TEST_CASE("a server name list must hold exactly one host name") {
    const auto two =
        inspect(with_server_name(server_name_body({"localhost", "evil.example"})).build());
    const auto other_type =
        inspect(with_server_name(server_name_body({"localhost"}, 0, 1)).build());
    const auto empty_list = inspect(with_server_name(server_name_body({})).build());
    const auto empty_name = inspect(with_server_name(server_name_body({""})).build());
    const auto empty_extension = inspect(with_server_name({}).build());

    CHECK(two.verdict == hello_verdict::malformed);
    CHECK(two.reason == "more than one server name");
    CHECK(other_type.reason == "server name is not a host name");
    CHECK(empty_list.reason == "empty server name list");
    CHECK(empty_name.reason == "empty server name");
    CHECK(empty_extension.reason == "server name extension too short");
    CHECK(inspect(load("sni-two-names.bin")).verdict == hello_verdict::malformed);
    CHECK(inspect(load("sni-list-length-plus-one.bin")).verdict == hello_verdict::malformed);
    CHECK(inspect(load("sni-empty-extension.bin")).verdict == hello_verdict::malformed);
}

TEST_CASE("a server name of 253 bytes is accepted and one of 254 is not") {
    const std::string longest(253, 'a');
    const std::string too_long(254, 'a');

    CHECK(inspect(with_server_name(server_name_body({longest})).build()).sni == longest);
    CHECK(inspect(with_server_name(server_name_body({too_long})).build()).reason ==
          "server name longer than 253 bytes");
}

TEST_CASE("an extension sent twice is malformed") {
    hello_builder two_names;
    two_names.extensions.push_back({0x0000, server_name_body({"evil.example"})});
    hello_builder two_versions;
    two_versions.extensions.push_back(two_versions.extensions[1]);

    CHECK(inspect(two_names.build()).reason == "extension sent twice");
    CHECK(inspect(two_versions.build()).reason == "extension sent twice");
}

TEST_CASE("a verdict other than need-more never changes as more bytes arrive") {
    for (const auto& entry : std::filesystem::directory_iterator(corpus_dir)) {
        const auto file = entry.path().filename().string();
        CAPTURE(file);
        const auto data = load(file);

        std::optional<hello_info> decided;
        for (std::size_t size = 0; size <= data.size(); ++size) {
            CAPTURE(size);
            const auto info = inspect_prefix(data, size);
            if (decided) {
                REQUIRE(info.verdict == decided->verdict);
                REQUIRE(info.reason == decided->reason);
            } else if (info.verdict != hello_verdict::need_more) {
                decided = info;
            }
        }
    }
}

TEST_CASE("verdicts have log names") {
    CHECK(to_string(hello_verdict::need_more) == "need-more");
    CHECK(to_string(hello_verdict::ok) == "ok");
    CHECK(to_string(hello_verdict::not_tls) == "not-tls");
    CHECK(to_string(hello_verdict::malformed) == "malformed");
    CHECK(to_string(hello_verdict::too_large) == "too-large");
}
