// Small socket and clock helpers shared by the load generator's server and client.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace loadgen {

using clock = std::chrono::steady_clock;

// The first byte a client sends says what the upstream server does with the connection.
// 'E': echo every byte (including this one) until end of stream.
// 'C': header 'C' + 2-byte size; echo the first `size` bytes (header included), then end the
//      sending half, and close at the client's end of stream (the server closes first, as an
//      HTTP/1.0 server does, so no connecting side is left with TIME_WAIT sockets).
// 'U': header 'U' + 8-byte id; read and discard until end of stream, then report the byte count
//      and times under that id (see upstream_server::wait_upload).
// 'D': header 'D' + 8-byte id + 4-byte milliseconds; send as fast as possible for that long,
//      then end the sending half and close at the client's end of stream.
constexpr char mode_echo = 'E';
constexpr char mode_exchange = 'C';
constexpr char mode_upload = 'U';
constexpr char mode_download = 'D';
constexpr std::size_t exchange_header_size = 1 + 2;
constexpr std::size_t upload_header_size = 1 + 8;
constexpr std::size_t download_header_size = 1 + 8 + 4;

// Size of every bulk read and write.
constexpr std::size_t bulk_chunk = 128 * 1024;

// A connected, blocking TCP socket to 127.0.0.1:port, or -1 with errno set.
int connect_loopback(std::uint16_t port);

// A non-blocking TCP socket with a connect to 127.0.0.1:port started, or -1 with errno set.
int start_connect_loopback(std::uint16_t port);

// Sets O_NONBLOCK; returns false on failure.
bool set_nonblocking(int fd);

// Sets TCP_NODELAY; returns false on failure.
bool set_nodelay(int fd);

// Sets SO_RCVTIMEO and SO_SNDTIMEO so blocking calls cannot hang forever.
void set_io_timeout(int fd, std::chrono::milliseconds timeout);

// Writes all of data on a blocking socket; false on error or end.
bool write_all(int fd, const void* data, std::size_t size);

// Reads exactly size bytes from a blocking socket; false on error, timeout or end of stream.
bool read_exact(int fd, void* data, std::size_t size);

// Raises the soft open-files limit to the hard limit; returns the new soft limit.
std::uint64_t raise_open_files_limit();

// Seconds since the clock's epoch, for differences.
double seconds(clock::duration duration);

// Nearest-rank percentile (q in [0, 1]) of samples, which it sorts; 0 when empty.
double percentile(std::vector<double>& samples, double q);

// A short name for an errno value (ECONNRESET -> "reset"), for error counts.
std::string error_kind(int error_number);

// Writes a big-endian integer of size bytes at out.
void put_be(unsigned char* out, std::uint64_t value, std::size_t size);

// Reads a big-endian integer of size bytes at in.
std::uint64_t get_be(const unsigned char* in, std::size_t size);

}  // namespace loadgen
