#include "loadgen_client.hpp"

#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <thread>

namespace loadgen {

namespace {

using namespace std::chrono_literals;

std::atomic<std::uint64_t> next_upload_id{1};

// Slack allowed after a measurement's nominal end before the missing parts count as errors.
constexpr auto grace = 15s;

clock::duration from_seconds(double value) {
    return std::chrono::duration_cast<clock::duration>(std::chrono::duration<double>(value));
}

void note_error(throughput_result& result, const std::string& what) {
    ++result.errors;
    if (result.first_error.empty()) {
        result.first_error = what;
    }
}

// Upload: write from every stream until the time is up, end each sending half, then take the
// byte counts and end times from the server.
void upload(upstream_server& server, const std::vector<int>& fds, double duration,
            throughput_result& result) {
    std::vector<std::uint64_t> ids;
    const std::vector<char> chunk(bulk_chunk, 'u');
    const int epoll = ::epoll_create1(EPOLL_CLOEXEC);
    const auto start = clock::now();
    for (std::size_t i = 0; i < fds.size(); ++i) {
        unsigned char header[upload_header_size] = {static_cast<unsigned char>(mode_upload)};
        ids.push_back(next_upload_id.fetch_add(1));
        put_be(header + 1, ids.back(), 8);
        write_all(fds[i], header, sizeof header);
        set_nonblocking(fds[i]);
        epoll_event event{};
        event.events = EPOLLOUT;
        event.data.u64 = i;
        ::epoll_ctl(epoll, EPOLL_CTL_ADD, fds[i], &event);
    }

    const auto stop_at = start + from_seconds(duration);
    std::vector<bool> broken(fds.size(), false);
    epoll_event events[16];
    while (clock::now() < stop_at) {
        const int count = ::epoll_wait(epoll, events, 16, 20);
        for (int e = 0; e < count; ++e) {
            const auto i = events[e].data.u64;
            for (int turn = 0; turn < 8 && !broken[i]; ++turn) {
                const ssize_t sent = ::send(fds[i], chunk.data(), chunk.size(), MSG_NOSIGNAL);
                if (sent < 0 && errno == EAGAIN) {
                    break;
                }
                if (sent < 0 && errno != EINTR) {
                    broken[i] = true;
                    ::epoll_ctl(epoll, EPOLL_CTL_DEL, fds[i], nullptr);
                    note_error(result, "send: " + error_kind(errno));
                }
            }
        }
    }
    ::close(epoll);
    for (const int fd : fds) {
        ::shutdown(fd, SHUT_WR);
    }

    auto end = start;
    const auto wait_until = clock::now() + grace;
    for (std::size_t i = 0; i < ids.size(); ++i) {
        const auto seen = server.wait_upload(ids[i], wait_until);
        if (!seen) {
            note_error(result, "upload end not seen by the server");
            continue;
        }
        if (seen->failed && !broken[i]) {
            note_error(result, "upload ended with an error at the server");
        }
        result.bytes += seen->bytes;
        end = std::max(end, seen->end);
    }
    result.seconds = seconds(end - start);
}

// Download: ask each stream's server side to send for the duration; read to end of stream.
void download(const std::vector<int>& fds, double duration, throughput_result& result) {
    std::vector<char> buffer(bulk_chunk);
    const int epoll = ::epoll_create1(EPOLL_CLOEXEC);
    const auto start = clock::now();
    for (std::size_t i = 0; i < fds.size(); ++i) {
        unsigned char header[download_header_size] = {static_cast<unsigned char>(mode_download)};
        put_be(header + 1, next_upload_id.fetch_add(1), 8);
        put_be(header + 9, static_cast<std::uint64_t>(duration * 1000), 4);
        write_all(fds[i], header, sizeof header);
        set_nonblocking(fds[i]);
        epoll_event event{};
        event.events = EPOLLIN;
        event.data.u64 = i;
        ::epoll_ctl(epoll, EPOLL_CTL_ADD, fds[i], &event);
    }

    const auto give_up = start + from_seconds(duration) + grace;
    auto end = start;
    std::size_t open = fds.size();
    epoll_event events[16];
    while (open > 0 && clock::now() < give_up) {
        const int count = ::epoll_wait(epoll, events, 16, 100);
        for (int e = 0; e < count; ++e) {
            const auto i = events[e].data.u64;
            for (int turn = 0; turn < 8; ++turn) {
                const ssize_t got = ::recv(fds[i], buffer.data(), buffer.size(), 0);
                if (got < 0 && (errno == EAGAIN || errno == EINTR)) {
                    break;
                }
                if (got > 0) {
                    result.bytes += static_cast<std::uint64_t>(got);
                    continue;
                }
                if (got < 0) {
                    note_error(result, "recv: " + error_kind(errno));
                }
                end = std::max(end, clock::now());
                ::epoll_ctl(epoll, EPOLL_CTL_DEL, fds[i], nullptr);
                --open;
                break;
            }
        }
    }
    ::close(epoll);
    for (std::size_t i = 0; i < open; ++i) {
        note_error(result, "download did not end in time");
    }
    result.seconds = seconds(end - start);
}

}  // namespace

throughput_result run_throughput(upstream_server& server, std::uint16_t port, bool upload_mode,
                                 int streams, double duration) {
    throughput_result result;
    std::vector<int> fds;
    for (int i = 0; i < streams; ++i) {
        const int fd = connect_loopback(port);
        if (fd < 0) {
            note_error(result, "connect: " + error_kind(errno));
            continue;
        }
        set_io_timeout(fd, 5s);
        set_nodelay(fd);  // as the server's side has: both directions send alike
        fds.push_back(fd);
    }
    if (!fds.empty()) {
        if (upload_mode) {
            upload(server, fds, duration, result);
        } else {
            download(fds, duration, result);
        }
    }
    for (const int fd : fds) {
        ::close(fd);
    }
    return result;
}

churn_result run_churn(std::uint16_t port, int concurrency, double duration, std::size_t size) {
    struct slot {
        int fd = -1;
        bool connected = false;
        std::size_t got = 0;
        clock::time_point start;
    };
    size = std::max(size, exchange_header_size);
    std::vector<char> message(size, 'c');
    message[0] = mode_exchange;
    put_be(reinterpret_cast<unsigned char*>(message.data()) + 1, size, 2);
    std::vector<char> reply(size + 1);
    std::vector<slot> slots(static_cast<std::size_t>(concurrency));
    std::vector<double> latencies;
    latencies.reserve(1 << 20);
    churn_result result;
    const int epoll = ::epoll_create1(EPOLL_CLOEXEC);

    auto fail = [&](slot& s, const std::string& kind) {
        ++result.errors;
        ++result.error_kinds[kind];
        ::close(s.fd);
        s.fd = -1;
    };

    const auto start = clock::now();
    const auto stop_at = start + from_seconds(duration);
    const auto give_up = stop_at + 3s;
    epoll_event events[128];
    for (;;) {
        const auto now = clock::now();
        const bool starting = now < stop_at;
        std::size_t busy = 0;
        bool start_failed = false;
        for (std::size_t i = 0; i < slots.size(); ++i) {
            if (slots[i].fd < 0 && starting) {
                slots[i] = slot{start_connect_loopback(port), false, 0, clock::now()};
                if (slots[i].fd < 0) {
                    ++result.errors;
                    ++result.error_kinds["connect_" + error_kind(errno)];
                    start_failed = true;
                    continue;
                }
                epoll_event event{};
                event.events = EPOLLOUT;
                event.data.u64 = i;
                ::epoll_ctl(epoll, EPOLL_CTL_ADD, slots[i].fd, &event);
            }
            busy += slots[i].fd >= 0 ? 1 : 0;
        }
        if (busy == 0 && !starting) {
            break;
        }
        if (now >= give_up) {
            for (auto& s : slots) {
                if (s.fd >= 0) {
                    fail(s, "timeout");
                }
            }
            break;
        }
        if (start_failed) {
            std::this_thread::sleep_for(1ms);  // no hot loop when the kernel refuses sockets
        }

        const int count = ::epoll_wait(epoll, events, 128, 10);
        for (int e = 0; e < count; ++e) {
            auto& s = slots[events[e].data.u64];
            if (!s.connected) {
                int error = 0;
                socklen_t length = sizeof error;
                ::getsockopt(s.fd, SOL_SOCKET, SO_ERROR, &error, &length);
                if (error != 0) {
                    fail(s, "connect_" + error_kind(error));
                    continue;
                }
                if (::send(s.fd, message.data(), size, MSG_NOSIGNAL) !=
                    static_cast<ssize_t>(size)) {
                    fail(s, "send_" + error_kind(errno));
                    continue;
                }
                s.connected = true;
                epoll_event event{};
                event.events = EPOLLIN;
                event.data.u64 = events[e].data.u64;
                ::epoll_ctl(epoll, EPOLL_CTL_MOD, s.fd, &event);
                continue;
            }
            // Read the echo, then the server's end of stream: one byte more than the echo fits.
            const ssize_t got = ::recv(s.fd, reply.data() + s.got, size + 1 - s.got, 0);
            if (got < 0 && (errno == EAGAIN || errno == EINTR)) {
                continue;
            }
            if (got < 0) {
                fail(s, "recv_" + error_kind(errno));
                continue;
            }
            if (got == 0 && s.got < size) {
                fail(s, "early_end_of_stream");
                continue;
            }
            s.got += static_cast<std::size_t>(got);
            if (s.got > size) {
                fail(s, "extra_bytes");
                continue;
            }
            if (got > 0) {
                continue;
            }
            if (std::memcmp(reply.data(), message.data(), size) != 0) {
                fail(s, "reply_mismatch");
                continue;
            }
            const auto done = clock::now();
            latencies.push_back(std::chrono::duration<double, std::micro>(done - s.start).count());
            ++(done <= stop_at ? result.completed : result.drained);
            ::close(s.fd);
            s.fd = -1;
        }
    }
    ::close(epoll);
    result.seconds = duration;
    result.p50_us = percentile(latencies, 0.50);
    result.p99_us = percentile(latencies, 0.99);
    return result;
}

ping_result run_ping(std::uint16_t port, std::size_t size, int count, int warmup,
                     double time_limit) {
    ping_result result;
    const int fd = connect_loopback(port);
    if (fd < 0) {
        result.error = "connect: " + error_kind(errno);
        return result;
    }
    set_nodelay(fd);
    set_io_timeout(fd, 5s);
    std::vector<char> message(size, 'p');
    message[0] = mode_echo;
    std::vector<char> reply(size);
    std::vector<double> samples;
    samples.reserve(static_cast<std::size_t>(count));
    const auto give_up = clock::now() + from_seconds(time_limit);
    double total = 0;

    for (int round = 0; round < warmup + count && clock::now() < give_up; ++round) {
        const auto sent_at = clock::now();
        if (!write_all(fd, message.data(), size) || !read_exact(fd, reply.data(), size)) {
            result.error = "round trip: " + error_kind(errno);
            break;
        }
        const double micros =
            std::chrono::duration<double, std::micro>(clock::now() - sent_at).count();
        if (round >= warmup) {
            samples.push_back(micros);
            total += micros;
            result.max_us = std::max(result.max_us, micros);
        }
    }
    ::close(fd);
    result.rounds = samples.size();
    result.mean_us = samples.empty() ? 0 : total / static_cast<double>(samples.size());
    result.p50_us = percentile(samples, 0.50);
    result.p99_us = percentile(samples, 0.99);
    result.p999_us = percentile(samples, 0.999);
    return result;
}

connection_holder::outcome connection_holder::open(std::uint16_t port, int count) {
    outcome result;
    const auto start = clock::now();
    const auto give_up = start + 60s;
    const char probe[2] = {mode_echo, '!'};
    char answer[2];
    for (int i = 0; i < count && clock::now() < give_up; ++i) {
        const int fd = connect_loopback(port);
        if (fd < 0) {
            ++result.errors;
            result.first_error =
                result.first_error.empty() ? error_kind(errno) : result.first_error;
            continue;
        }
        set_io_timeout(fd, 5s);
        if (!write_all(fd, probe, 2) || !read_exact(fd, answer, 2)) {
            ++result.errors;
            result.first_error =
                result.first_error.empty() ? error_kind(errno) : result.first_error;
            ::close(fd);
            continue;
        }
        fds_.push_back(fd);
    }
    result.held = fds_.size();
    result.seconds = seconds(clock::now() - start);
    return result;
}

std::size_t connection_holder::release() {
    const auto count = fds_.size();
    for (const int fd : fds_) {
        ::close(fd);
    }
    fds_.clear();
    return count;
}

}  // namespace loadgen
