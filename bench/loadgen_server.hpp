// The upstream end of every benchmark: an echo, sink and source server on 127.0.0.1, run by one
// epoll thread inside the load generator so that upload figures are taken where the bytes land.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "loadgen_net.hpp"

namespace loadgen {

// What the server saw on one upload ('U') connection.
struct upload_result {
    std::uint64_t bytes = 0;
    clock::time_point end;  // when the end of stream (or the error) was read
    bool failed = false;    // the connection ended with an error instead of a clean end of stream
};

class upstream_server {
  public:
    // Listens on 127.0.0.1 on a port the kernel picks and starts the serving thread.
    // Throws std::runtime_error when the socket cannot be set up.
    upstream_server();

    // Stops the thread and closes every connection.
    ~upstream_server();

    upstream_server(const upstream_server&) = delete;
    upstream_server& operator=(const upstream_server&) = delete;

    // The listening port.
    std::uint16_t port() const { return port_; }

    // Waits until the upload connection that sent id has ended, or until deadline; takes its
    // result out of the table.
    std::optional<upload_result> wait_upload(std::uint64_t id, clock::time_point deadline);

    // Connections currently open on the server side.
    std::size_t open_connections() const;

  private:
    struct peer;

    void run();
    void accept_all();
    void on_event(peer& connection, std::uint32_t events);
    bool on_readable(peer& connection);
    bool on_writable(peer& connection);
    bool start_mode(peer& connection, const char* data, std::size_t size);
    void end_exchange_when_done(peer& connection);
    void update_interest(peer& connection);
    void finish(peer& connection, bool failed);

    int listener_ = -1;
    int epoll_ = -1;
    int wake_ = -1;
    std::uint16_t port_ = 0;
    std::map<int, peer*> peers_;  // owned; touched by the serving thread only
    std::atomic<std::size_t> open_count_{0};
    std::vector<char> buffer_;
    std::vector<char> source_;

    std::mutex results_mutex_;
    std::condition_variable results_ready_;
    std::map<std::uint64_t, upload_result> results_;

    std::thread thread_;
};

}  // namespace loadgen
