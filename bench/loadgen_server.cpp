#include "loadgen_server.hpp"

#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace loadgen {

namespace {

// Reads or writes per readiness event on one bulk connection, so that parallel streams get
// turns of similar size.
constexpr int bulk_turns = 8;

}  // namespace

struct upstream_server::peer {
    int fd = -1;
    char mode = 0;  // 0 until the first byte arrives
    unsigned char header[download_header_size] = {};
    std::size_t header_size = 0;
    bool header_done = false;
    std::uint64_t id = 0;
    std::uint64_t bytes = 0;
    clock::time_point send_until;
    bool sending = false;        // download: still within its sending time
    bool ended_sending = false;  // exchange: its sending half has been shut down
    std::vector<char> pending;   // echo: bytes read but not yet written back
    std::uint32_t interest = 0;
};

upstream_server::upstream_server() : buffer_(bulk_chunk), source_(bulk_chunk, 'x') {
    listener_ = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    const int on = 1;
    ::setsockopt(listener_, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t length = sizeof address;
    if (listener_ < 0 || ::bind(listener_, reinterpret_cast<sockaddr*>(&address), length) != 0 ||
        ::listen(listener_, 4096) != 0 ||
        ::getsockname(listener_, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
        throw std::runtime_error(std::string("upstream server: ") + std::strerror(errno));
    }
    port_ = ntohs(address.sin_port);

    epoll_ = ::epoll_create1(EPOLL_CLOEXEC);
    wake_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (epoll_ < 0 || wake_ < 0) {
        throw std::runtime_error(std::string("upstream server: ") + std::strerror(errno));
    }
    epoll_event event{};
    event.events = EPOLLIN;
    event.data.ptr = &listener_;
    ::epoll_ctl(epoll_, EPOLL_CTL_ADD, listener_, &event);
    event.data.ptr = &wake_;
    ::epoll_ctl(epoll_, EPOLL_CTL_ADD, wake_, &event);

    thread_ = std::thread([this] { run(); });
}

upstream_server::~upstream_server() {
    const std::uint64_t one = 1;
    [[maybe_unused]] const auto ignored = ::write(wake_, &one, sizeof one);
    thread_.join();
    for (auto& [fd, connection] : peers_) {
        ::close(fd);
        delete connection;
    }
    ::close(listener_);
    ::close(wake_);
    ::close(epoll_);
}

std::optional<upload_result> upstream_server::wait_upload(std::uint64_t id,
                                                          clock::time_point deadline) {
    std::unique_lock lock(results_mutex_);
    if (!results_ready_.wait_until(lock, deadline, [&] { return results_.count(id) != 0; })) {
        return std::nullopt;
    }
    auto node = results_.extract(id);
    return node.mapped();
}

std::size_t upstream_server::open_connections() const {
    return open_count_.load();
}

void upstream_server::run() {
    epoll_event events[64];
    for (;;) {
        const int count = ::epoll_wait(epoll_, events, 64, -1);
        if (count < 0 && errno == EINTR) {
            continue;
        }
        for (int i = 0; i < count; ++i) {
            if (events[i].data.ptr == &wake_) {
                return;
            }
            if (events[i].data.ptr == &listener_) {
                accept_all();
                continue;
            }
            on_event(*static_cast<peer*>(events[i].data.ptr), events[i].events);
        }
    }
}

void upstream_server::accept_all() {
    for (;;) {
        const int fd = ::accept4(listener_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            return;  // EAGAIN, or a transient failure that the next readiness retries
        }
        set_nodelay(fd);
        auto* connection = new peer;
        connection->fd = fd;
        peers_[fd] = connection;
        open_count_.fetch_add(1);
        update_interest(*connection);
    }
}

void upstream_server::on_event(peer& connection, std::uint32_t events) {
    if ((events & (EPOLLIN | EPOLLERR | EPOLLHUP)) != 0 && !on_readable(connection)) {
        return;
    }
    if ((events & EPOLLOUT) != 0) {
        on_writable(connection);
    }
}

bool upstream_server::on_readable(peer& connection) {
    for (int turn = 0; turn < bulk_turns; ++turn) {
        const ssize_t got = ::recv(connection.fd, buffer_.data(), buffer_.size(), 0);
        if (got < 0 && errno == EINTR) {
            continue;
        }
        if (got < 0 && errno == EAGAIN) {
            return true;
        }
        if (got <= 0) {
            finish(connection, got < 0);
            return false;
        }
        if (!start_mode(connection, buffer_.data(), static_cast<std::size_t>(got))) {
            return false;
        }
        if (!connection.pending.empty()) {
            return true;  // read again only once the echo has been written back
        }
    }
    return true;
}

// Takes the bytes just read: parses the header until complete, then acts per mode.
bool upstream_server::start_mode(peer& connection, const char* data, std::size_t size) {
    if (connection.mode == 0) {
        connection.mode = data[0];
        if (connection.mode != mode_echo && connection.mode != mode_exchange &&
            connection.mode != mode_upload && connection.mode != mode_download) {
            finish(connection, true);
            return false;
        }
    }
    if (connection.mode == mode_echo || connection.mode == mode_exchange) {
        if (connection.mode == mode_exchange && connection.header_size < exchange_header_size) {
            const std::size_t take = std::min(size, exchange_header_size - connection.header_size);
            std::memcpy(connection.header + connection.header_size, data, take);
            connection.header_size += take;
        }
        connection.bytes += size;
        if (connection.pending.empty()) {
            const ssize_t sent = ::send(connection.fd, data, size, MSG_NOSIGNAL);
            if (sent < 0 && errno != EAGAIN) {
                finish(connection, true);
                return false;
            }
            const auto done = static_cast<std::size_t>(std::max<ssize_t>(sent, 0));
            connection.pending.assign(data + done, data + size);
        } else {
            connection.pending.insert(connection.pending.end(), data, data + size);
        }
        end_exchange_when_done(connection);
        update_interest(connection);
        return true;
    }

    const std::size_t wanted =
        connection.mode == mode_upload ? upload_header_size : download_header_size;
    if (!connection.header_done) {
        const std::size_t take = std::min(size, wanted - connection.header_size);
        std::memcpy(connection.header + connection.header_size, data, take);
        connection.header_size += take;
        data += take;
        size -= take;
        if (connection.header_size < wanted) {
            return true;
        }
        connection.header_done = true;
        connection.id = get_be(connection.header + 1, 8);
        if (connection.mode == mode_download) {
            const auto millis = get_be(connection.header + 9, 4);
            connection.send_until = clock::now() + std::chrono::milliseconds(millis);
            connection.sending = true;
            update_interest(connection);
        }
    }
    connection.bytes += size;
    return true;
}

bool upstream_server::on_writable(peer& connection) {
    if (connection.mode == mode_echo || connection.mode == mode_exchange) {
        const ssize_t sent = ::send(connection.fd, connection.pending.data(),
                                    connection.pending.size(), MSG_NOSIGNAL);
        if (sent < 0 && errno != EAGAIN) {
            finish(connection, true);
            return false;
        }
        if (sent > 0) {
            connection.pending.erase(connection.pending.begin(), connection.pending.begin() + sent);
        }
        end_exchange_when_done(connection);
        update_interest(connection);
        return true;
    }
    for (int turn = 0; turn < bulk_turns && connection.sending; ++turn) {
        if (clock::now() >= connection.send_until) {
            ::shutdown(connection.fd, SHUT_WR);
            connection.sending = false;
            update_interest(connection);
            return true;
        }
        const ssize_t sent = ::send(connection.fd, source_.data(), source_.size(), MSG_NOSIGNAL);
        if (sent < 0 && errno == EAGAIN) {
            return true;
        }
        if (sent < 0 && errno != EINTR) {
            finish(connection, true);
            return false;
        }
    }
    return true;
}

void upstream_server::end_exchange_when_done(peer& connection) {
    if (connection.mode != mode_exchange || connection.ended_sending ||
        connection.header_size < exchange_header_size || !connection.pending.empty() ||
        connection.bytes < get_be(connection.header + 1, 2)) {
        return;
    }
    ::shutdown(connection.fd, SHUT_WR);
    connection.ended_sending = true;
}

void upstream_server::update_interest(peer& connection) {
    std::uint32_t wanted = EPOLLIN;
    if (!connection.pending.empty()) {
        wanted = EPOLLOUT;
    } else if (connection.sending) {
        wanted = EPOLLIN | EPOLLOUT;
    }
    if (wanted == connection.interest) {
        return;
    }
    epoll_event event{};
    event.events = wanted;
    event.data.ptr = &connection;
    const int operation = connection.interest == 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD;
    ::epoll_ctl(epoll_, operation, connection.fd, &event);
    connection.interest = wanted;
}

void upstream_server::finish(peer& connection, bool failed) {
    if (connection.mode == mode_upload && connection.header_done) {
        std::lock_guard lock(results_mutex_);
        results_[connection.id] = upload_result{connection.bytes, clock::now(), failed};
        results_ready_.notify_all();
    }
    ::close(connection.fd);
    peers_.erase(connection.fd);
    open_count_.fetch_sub(1);
    delete &connection;
}

}  // namespace loadgen
