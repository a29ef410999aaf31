// tcptunnel: relays TCP connections from local listeners to one upstream address.
#include <cstdio>
#include <cstring>
#include <exception>

#include "config.hpp"
#include "probe.hpp"
#include "tunnel.hpp"

int main(int argc, char** argv) {
    using namespace tcptunnel;

    if (argc >= 2 && std::strcmp(argv[1], "probe") == 0) {
        return run_probe_command(argc - 1, argv + 1);
    }
    try {
        const auto command = parse_command_line(argc, argv);
        if (command.what == command_line::action::print_and_exit) {
            std::fputs(command.output.c_str(), stdout);
            return 0;
        }
        return run_tunnel(command.config);
    } catch (const usage_error& error) {
        std::fprintf(stderr, "tcptunnel: %s\n", error.what());
        return 2;
    } catch (const std::exception& error) {
        std::fprintf(stderr, "tcptunnel: %s\n", error.what());
        return 1;
    }
}
