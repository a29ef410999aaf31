#include "admission.hpp"

#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <span>

#include "client_hello.hpp"

namespace tcptunnel {

namespace {

admission_result refuse(std::string refusal, std::string detail) {
    return {std::move(refusal), std::move(detail)};
}

// Asio re-arms an edge-triggered descriptor with EPOLL_CTL_MOD for each wait, and the kernel then
// reports it readable at once while any byte is queued. Peeked bytes stay queued, so a plain wait
// would return immediately, again and again, until the deadline: a busy loop. Raising the
// socket's low-water mark (SO_RCVLOWAT) makes it readable only once the bytes still missing have
// arrived, or at the peer's FIN or reset. The destructor restores the default of one byte, which
// the relay's waits rely on.
class receive_low_water {
  public:
    explicit receive_low_water(int descriptor) : descriptor_(descriptor) {}
    receive_low_water(const receive_low_water&) = delete;
    receive_low_water& operator=(const receive_low_water&) = delete;
    ~receive_low_water() {
        if (raised_) {
            set(1);
        }
    }

    // Limitation: where the kernel ignores the mark, each wait still returns at once, and the
    // loop spins until the hello is complete or the deadline passes.
    void set(std::size_t bytes) {
        const int value = static_cast<int>(bytes);
        raised_ = raised_ || value > 1;
        ::setsockopt(descriptor_, SOL_SOCKET, SO_RCVLOWAT, &value, sizeof value);
    }

  private:
    int descriptor_;
    bool raised_ = false;
};

// The bytes that must be queued before another look is worth it: the whole first record once its
// header is in (a flaw inside it is then found when it is complete), else one more than now.
std::size_t bytes_wanted(std::span<const std::byte> peeked) {
    std::size_t wanted = peeked.size() + 1;
    if (peeked.size() >= tls_record_header_size) {
        const std::size_t record_length = (std::to_integer<std::size_t>(peeked[3]) << 8) |
                                          std::to_integer<std::size_t>(peeked[4]);
        wanted = std::max(wanted, tls_record_header_size + record_length);
    }
    return std::min(wanted, max_client_hello_bytes);
}

// True when no byte will follow those queued: the peer shut down its sending side, or the
// connection failed. A FIN keeps the socket readable, so waiting would not wait.
bool peer_stopped_sending(int descriptor) {
    pollfd entry{descriptor, POLLIN | POLLRDHUP, 0};
    return ::poll(&entry, 1, 0) == 1 && (entry.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

admission_result check_hello(const hello_info& hello, const admission_policy& policy) {
    if (hello.verdict != hello_verdict::ok) {
        return refuse(std::string(to_string(hello.verdict)), std::string(hello.reason));
    }
    if (policy.allowed_names.empty()) {
        return admission_result{};
    }
    if (!hello.has_sni) {
        return refuse("no-sni", "ClientHello without a server name");
    }
    const auto& names = policy.allowed_names;
    if (std::find(names.begin(), names.end(), hello.sni) == names.end()) {
        return refuse("sni-not-allowed", "server name " + hello.sni);
    }
    return admission_result{};
}

}  // namespace

asio::awaitable<admission_result> admit_client(tcp::socket& client, const admission_policy& policy,
                                               buffer_pool& buffers) {
    if (!policy.allow_from.empty()) {
        std::error_code error;
        const auto peer = client.remote_endpoint(error);
        if (error || !policy.allow_from.allows(peer.address())) {
            co_return refuse("not-allowed", "source address not in --allow-from");
        }
    }
    if (!policy.inspects_bytes()) {
        co_return admission_result{};
    }

    // The deadline closes nothing: it cancels the wait, and the loop below sees it expired.
    scoped_deadline deadline(client.get_executor(), policy.hello_timeout, [&client]() {
        std::error_code ignored;
        client.cancel(ignored);
    });

    const int descriptor = client.native_handle();
    receive_low_water low_water(descriptor);
    buffer_pool::lease buffer(buffers);
    static_assert(buffer_pool::lease::size() >= max_client_hello_bytes);
    for (;;) {
        const auto peeked =
            ::recv(descriptor, buffer.data(), max_client_hello_bytes, MSG_PEEK | MSG_DONTWAIT);
        if (peeked == 0) {
            co_return refuse("closed", "client closed before a complete ClientHello");
        }
        if (peeked < 0 && errno == EINTR) {
            continue;
        }
        if (peeked < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
            co_return refuse("closed", std::error_code(errno, std::system_category()).message());
        }

        const auto bytes = std::span<const std::byte>(
            buffer.data(), static_cast<std::size_t>(peeked > 0 ? peeked : 0));
        if (!bytes.empty()) {
            const auto hello = inspect_client_hello(bytes);
            if (hello.verdict != hello_verdict::need_more) {
                co_return check_hello(hello, policy);
            }
            if (peer_stopped_sending(descriptor)) {
                co_return refuse("closed", "client closed before a complete ClientHello");
            }
        }

        low_water.set(bytes_wanted(bytes));
        auto [error] = co_await client.async_wait(tcp::socket::wait_read, use_nothrow);
        if (deadline.expired()) {
            co_return refuse("hello-timeout", "no complete ClientHello in time");
        }
        if (error) {
            co_return refuse("closed", error.message());
        }
    }
}

}  // namespace tcptunnel
