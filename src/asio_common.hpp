// The Asio vocabulary shared by the networking files.
#pragma once

#include <asio.hpp>
#include <asio/experimental/as_tuple.hpp>

namespace tcptunnel {

using asio::ip::tcp;

// Completion token for coroutines on the data path: results come back as a tuple whose first
// element is the error_code, so an expected outcome (EOF, reset, cancel) never throws.
inline constexpr auto use_nothrow = asio::experimental::as_tuple(asio::use_awaitable);

}  // namespace tcptunnel
