#include "splice_pump.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

namespace tcptunnel {

namespace {

constexpr unsigned splice_flags = SPLICE_F_MOVE | SPLICE_F_NONBLOCK;

std::error_code last_error() {
    return {errno, std::system_category()};
}

}  // namespace

splice_pipe::~splice_pipe() {
    ::close(read_fd_);
    ::close(write_fd_);
}

std::size_t splice_pipe::fill_from(int socket_fd, std::error_code& error) {
    error.clear();
    const auto room = capacity_ - held_;
    if (room == 0) {
        error = std::make_error_code(std::errc::operation_would_block);
        return 0;
    }
    ssize_t moved;
    do {
        moved = ::splice(socket_fd, nullptr, write_fd_, nullptr, room, splice_flags);
    } while (moved < 0 && errno == EINTR);
    if (moved < 0) {
        // EAGAIN has two meanings here: the socket has nothing to read, or every pipe slot is
        // taken (a slot holds one segment, however small). Only EAGAIN into an empty pipe
        // means "no data"; the relay therefore fills only empty pipes.
        error = last_error();
        return 0;
    }
    held_ += static_cast<std::size_t>(moved);
    return static_cast<std::size_t>(moved);
}

std::size_t splice_pipe::drain_to(int socket_fd, std::error_code& error) {
    error.clear();
    ssize_t moved;
    do {
        moved = ::splice(read_fd_, nullptr, socket_fd, nullptr, held_, splice_flags);
    } while (moved < 0 && errno == EINTR);
    if (moved < 0) {
        error = last_error();
        return 0;
    }
    held_ -= static_cast<std::size_t>(moved);
    return static_cast<std::size_t>(moved);
}

std::unique_ptr<splice_pipe> pipe_pool::take(std::error_code& error) {
    error.clear();
    if (!spare_.empty()) {
        auto pipe = std::move(spare_.back());
        spare_.pop_back();
        return pipe;
    }

    int fds[2];
    if (::pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) {
        error = last_error();
        return nullptr;
    }
    // A larger pipe is an optimisation only: under a low pipe-user-pages-soft limit the kernel
    // refuses it, and the default size still works.
    auto capacity = static_cast<std::size_t>(::fcntl(fds[1], F_GETPIPE_SZ));
    const int resized = ::fcntl(fds[1], F_SETPIPE_SZ, static_cast<int>(preferred_capacity));
    if (resized > 0) {
        capacity = static_cast<std::size_t>(resized);
    }
    return std::make_unique<splice_pipe>(fds[0], fds[1], capacity);
}

void pipe_pool::give_back(std::unique_ptr<splice_pipe> pipe) {
    if (pipe && pipe->held() == 0 && spare_.size() < max_spare) {
        spare_.push_back(std::move(pipe));
    }
}

}  // namespace tcptunnel
