// tcptunnel: relays TCP connections from local listeners to one upstream address.
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <exception>

#if defined(ASIO_HAS_IO_URING)
#include <liburing.h>
#endif

#include "config.hpp"
#include "probe.hpp"
#include "tunnel.hpp"

namespace {

// The io_uring build has no epoll fallback, and where the kernel or a seccomp profile (Docker's,
// podman's) refuses io_uring, Asio fails deep inside io_context construction. Checking once, up
// front, turns that into one clear line and status 1.
bool io_uring_refused() {
#if defined(ASIO_HAS_IO_URING)
    io_uring ring{};
    const int result = ::io_uring_queue_init(1, &ring, 0);
    if (result < 0) {
        std::fprintf(stderr,
                     "tcptunnel: io_uring is not available (io_uring_setup: %s): "
                     "use the epoll build\n",
                     std::strerror(-result));
        return true;
    }
    ::io_uring_queue_exit(&ring);
#endif
    return false;
}

// Started with stdin, stdout or stderr closed, the event loop's own descriptors would take those
// numbers and the ready line and the log would be written into them: /dev/null fills the gaps.
void fill_closed_standard_descriptors() {
    // open() takes the lowest free number, which is `fd` once the lower ones are filled.
    for (int fd = 0; fd <= 2; ++fd) {
        if (::fcntl(fd, F_GETFD) == -1) {
            ::open("/dev/null", fd == 0 ? O_RDONLY : O_WRONLY);
        }
    }
}

}  // namespace

int main(int argc, char** argv) {
    using namespace tcptunnel;

    fill_closed_standard_descriptors();

    if (argc >= 2 && std::strcmp(argv[1], "probe") == 0) {
        return io_uring_refused() ? 1 : run_probe_command(argc - 1, argv + 1);
    }
    try {
        const auto command = parse_command_line(argc, argv);
        if (command.what == command_line::action::print_and_exit) {
            std::fputs(command.output.c_str(), stdout);
            return 0;
        }
        if (io_uring_refused()) {
            return 1;
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
