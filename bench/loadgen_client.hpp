// The load generator's client side: each function drives one measurement against a port on
// 127.0.0.1 (a tunnel, or the upstream server itself) and returns what it saw. Every one is bounded
// in time and in connections.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "loadgen_server.hpp"

namespace loadgen {

struct throughput_result {
    std::uint64_t bytes = 0;  // counted where they arrived: the server for uploads, here otherwise
    double seconds = 0;       // from the first byte sent to the last stream's end of stream
    std::uint64_t errors = 0;
    std::string first_error;
};

// Moves bytes through `streams` parallel connections for `duration` seconds, client to server
// (upload) or server to client, and times until every byte has arrived.
throughput_result run_throughput(upstream_server& server, std::uint16_t port, bool upload,
                                 int streams, double duration);

struct churn_result {
    std::uint64_t completed = 0;  // exchanges finished within the duration
    std::uint64_t drained = 0;    // exchanges started in time and finished after it
    std::uint64_t errors = 0;
    std::map<std::string, std::uint64_t> error_kinds;
    double seconds = 0;
    double p50_us = 0;  // connect to full reply, per exchange
    double p99_us = 0;
};

// Keeps `concurrency` exchanges going for `duration` seconds: connect, send `size` bytes, read
// them back and the server's end of stream, close. Exchanges still open 3 s after the end count as
// errors ("timeout").
churn_result run_churn(std::uint16_t port, int concurrency, double duration, std::size_t size);

struct ping_result {
    std::uint64_t rounds = 0;
    double p50_us = 0;
    double p99_us = 0;
    double p999_us = 0;
    double mean_us = 0;
    double max_us = 0;
    std::string error;
};

// Sends `size` bytes and waits for them back on one connection, `warmup` untimed rounds then
// `count` timed ones, stopping early after `time_limit` seconds.
ping_result run_ping(std::uint16_t port, std::size_t size, int count, int warmup,
                     double time_limit);

// Connections held open and idle, each having made one small round trip first.
class connection_holder {
  public:
    struct outcome {
        std::uint64_t held = 0;
        std::uint64_t errors = 0;
        std::string first_error;
        double seconds = 0;
    };

    ~connection_holder() { release(); }

    // Opens up to `count` more connections, one after the other, within 60 s.
    outcome open(std::uint16_t port, int count);

    // Closes every held connection; returns how many there were.
    std::size_t release();

  private:
    std::vector<int> fds_;
};

}  // namespace loadgen
