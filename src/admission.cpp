#include "admission.hpp"

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

    buffer_pool::lease buffer(buffers);
    static_assert(buffer_pool::lease::size() >= max_client_hello_bytes);
    for (;;) {
        const auto peeked = ::recv(client.native_handle(), buffer.data(), max_client_hello_bytes,
                                   MSG_PEEK | MSG_DONTWAIT);
        if (peeked == 0) {
            co_return refuse("closed", "client closed before a complete ClientHello");
        }
        if (peeked < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            co_return refuse("closed", std::error_code(errno, std::system_category()).message());
        }

        if (peeked > 0) {
            const auto hello = inspect_client_hello(
                std::span<const std::byte>(buffer.data(), static_cast<std::size_t>(peeked)));
            if (hello.verdict != hello_verdict::need_more) {
                    if (hello.verdict != hello_verdict::ok) {
                    co_return refuse(std::string(to_string(hello.verdict)),
                                     std::string(hello.reason));
                }
                if (policy.allowed_names.empty()) {
                    co_return admission_result{};
                }
                if (!hello.has_sni) {
                    co_return refuse("no-sni", "ClientHello without a server name");
                }
                const auto& names = policy.allowed_names;
                if (std::find(names.begin(), names.end(), hello.sni) == names.end()) {
                    co_return refuse("sni-not-allowed", "server name " + hello.sni);
                }
                co_return admission_result{};
            }
        }

        // The bytes stay queued, so readiness fires again only when more arrive.
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
