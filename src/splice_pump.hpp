// Linux zero-copy path: socket -> pipe -> socket with splice(2), and a pool of reusable pipes.
#pragma once

#include <cstddef>
#include <memory>
#include <system_error>
#include <vector>

namespace tcptunnel {

// A pipe used as the kernel-side buffer between two sockets. It tracks how many bytes it holds;
// only an empty pipe goes back to the pool.
class splice_pipe {
  public:
    splice_pipe(int read_fd, int write_fd, std::size_t capacity)
        : read_fd_(read_fd), write_fd_(write_fd), capacity_(capacity) {}
    splice_pipe(const splice_pipe&) = delete;
    splice_pipe& operator=(const splice_pipe&) = delete;
    ~splice_pipe();

    // Moves up to the pipe's free space from a non-blocking socket. Returns the bytes moved;
    // 0 with no error is the peer's FIN; would_block means no data now OR no free pipe slot.
    std::size_t fill_from(int socket_fd, std::error_code& error);

    // Moves what the pipe holds into a non-blocking socket. Returns the bytes moved;
    // would_block means the socket's send buffer is full.
    std::size_t drain_to(int socket_fd, std::error_code& error);

    std::size_t held() const { return held_; }
    std::size_t capacity() const { return capacity_; }

  private:
    int read_fd_;
    int write_fd_;
    std::size_t capacity_;
    std::size_t held_ = 0;
};

// A worker's spare pipes. Pipe pages are kernel memory charged to the container, so a pump holds
// a pipe only while bytes flow, and at most max_spare idle pipes are kept.
class pipe_pool {
  public:
    static constexpr std::size_t max_spare = 16;

    // An empty pipe, or nullptr with `error` set (e.g. EMFILE).
    std::unique_ptr<splice_pipe> take(std::error_code& error);

    // Keeps an empty pipe for reuse; a pipe still holding bytes is closed.
    void give_back(std::unique_ptr<splice_pipe> pipe);

    // The size asked for with F_SETPIPE_SZ; larger pipes mean fewer calls per GiB.
    static constexpr std::size_t preferred_capacity = 256 * 1024;

  private:
    std::vector<std::unique_ptr<splice_pipe>> spare_;
};

}  // namespace tcptunnel
