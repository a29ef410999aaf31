// Fuzzes the command line with an argv made of the input's NUL-separated pieces, dispatched as
// main() does (to the probe's parser after "probe", otherwise the tunnel's): each parser returns a
// runnable configuration or help text, or throws usage_error with a one-line message; it never
// crashes and throws nothing else.
#include <unistd.h>

#include <chrono>
#include <string>
#include <string_view>
#include <vector>

#include "config.hpp"
#include "fuzz_check.hpp"
#include "probe_options.hpp"

namespace {

using namespace std::chrono_literals;

void check_runnable(const tcptunnel::tunnel_config& config) {
    FUZZ_CHECK(!config.listen.empty());
    for (const auto& listen : config.listen) {
        FUZZ_CHECK(!listen.endpoint.host.empty());
        FUZZ_CHECK(!listen.display.empty());
    }
    FUZZ_CHECK(!config.upstream.host.empty());
    FUZZ_CHECK(config.upstream.port != 0);
    FUZZ_CHECK(!config.upstream_display.empty());

    FUZZ_CHECK(config.connect_timeout > 0ms && config.connect_timeout <= 24h);
    for (const auto timeout :
         {config.drain_timeout, config.idle_timeout, config.half_close_timeout}) {
        FUZZ_CHECK(timeout >= 0ms && timeout <= 24h);
    }
    FUZZ_CHECK(config.threads >= 1 && config.threads <= 64);
}

void check_runnable(const tcptunnel::probe_options& options) {
    FUZZ_CHECK(!options.target.host.empty());
    FUZZ_CHECK(options.target.port != 0);
    FUZZ_CHECK(options.timeout > 0ms && options.timeout <= 24h);
    FUZZ_CHECK(options.retry_delay >= 0ms && options.retry_delay_max >= 0ms);
    FUZZ_CHECK(options.retries <= 100);
}

template <typename Parse>
void check_parser(Parse parse) {
    try {
        const auto command = parse();
        if (command.what == decltype(command.what)::print_and_exit) {
            FUZZ_CHECK(!command.output.empty());
        } else if constexpr (requires { command.config; }) {
            check_runnable(command.config);
        } else {
            check_runnable(command.options);
        }
    } catch (const tcptunnel::usage_error& error) {
        const std::string_view message = error.what();
        FUZZ_CHECK(!message.empty());
        FUZZ_CHECK(message.find('\n') == std::string_view::npos);
    }
}

}  // namespace

// Options also come from TCPTUNNEL_* variables: clear them so that only the input counts.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
    std::vector<std::string> names;
    for (char** entry = environ; *entry != nullptr; ++entry) {
        const std::string_view variable = *entry;
        if (variable.starts_with("TCPTUNNEL_")) {
            names.emplace_back(variable.substr(0, variable.find('=')));
        }
    }
    for (const auto& name : names) {
        unsetenv(name.c_str());
    }
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    constexpr std::size_t max_arguments = 32;
    // An empty input stands for no arguments at all; otherwise each NUL starts a new argument.
    const auto arguments = size == 0 ? std::vector<std::string>{}
                                     : tcptunnel::fuzz::split_on_nul(
                                           tcptunnel::fuzz::as_text(data, size), max_arguments);
    std::vector<const char*> argv{"tcptunnel"};
    for (const auto& argument : arguments) {
        argv.push_back(argument.c_str());
    }
    argv.push_back(nullptr);
    const int argc = static_cast<int>(argv.size() - 1);

    if (argc >= 2 && std::string_view(argv[1]) == "probe") {
        check_parser(
            [&] { return tcptunnel::parse_probe_command_line(argc - 1, argv.data() + 1); });
    } else {
        check_parser([&] { return tcptunnel::parse_command_line(argc, argv.data()); });
    }
    return 0;
}
