"""The zero-copy data path: small segments, a reader that stops, bulk transfers both ways.

Each scenario runs with `--splice always` and `--splice auto` (and `never` for the bulk
transfer, as the reference). CPU time is read from /proc/PID/stat (utime + stime, all threads)
and RSS from /proc/PID/status. Every peer is a loopback socket of this process.
"""

import hashlib
import os
import socket
import threading
import time
import unittest

from tunnel_harness import (Listener, Tunnel, connect, echo_handler, exchange, log_fields,
                            process_cpu_seconds, process_rss_kib, wait_for_lines)

MIB = 1024 * 1024


def read_exactly(client, count, timeout=10.0):
    """Reads `count` bytes (or until EOF / timeout); returns (bytes, time of the last read)."""
    client.settimeout(timeout)
    chunks = []
    received = 0
    last = time.monotonic()
    try:
        while received < count:
            data = client.recv(min(count - received, 1 << 20))
            if not data:
                break
            chunks.append(data)
            received += len(data)
            last = time.monotonic()
    except socket.timeout:
        pass
    return b"".join(chunks), last


class SmallSegmentsTailTest(unittest.TestCase):
    """Case splice-small-segments-tail."""

    CHUNKS = 3000
    CHUNK_SIZE = 57

    def _run(self, mode):
        payload = os.urandom(self.CHUNKS * self.CHUNK_SIZE)
        last_write = {}
        release = threading.Event()
        self.addCleanup(release.set)

        def upstream_handler(conn):
            first = conn.recv(64)
            if first != b"go":
                conn.sendall(first)
                echo_handler(conn)
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for offset in range(0, len(payload), self.CHUNK_SIZE):
                conn.sendall(payload[offset:offset + self.CHUNK_SIZE])
            last_write["at"] = time.monotonic()
            release.wait(30)

        upstream = Listener(upstream_handler)
        self.addCleanup(upstream.close)
        tunnel = Tunnel("--listen", "127.0.0.1:0", "--to", "127.0.0.1:%d" % upstream.port,
                        "--splice", mode)
        self.addCleanup(tunnel.stop)
        other = connect(tunnel.port, timeout=10.0)
        self.addCleanup(other.close)
        self.assertEqual(exchange(other, b"other"), b"other")
        client = connect(tunnel.port, timeout=10.0)
        self.addCleanup(client.close)

        client.sendall(b"go")
        received, last_read = read_exactly(client, len(payload), timeout=5.0)
        cpu_before = process_cpu_seconds(tunnel.pid)
        time.sleep(2.0)
        idle_cpu = process_cpu_seconds(tunnel.pid) - cpu_before

        self.assertEqual(len(received), len(payload), "the tail stayed in the tunnel")
        self.assertEqual(received, payload)
        tail_delay = last_read - last_write["at"]
        self.assertLess(tail_delay, 1.0, "the last bytes arrived %.2fs after the last write"
                        % tail_delay)
        self.assertLess(idle_cpu, 0.05, "%.3fs of CPU in 2 idle seconds" % idle_cpu)
        self.assertEqual(exchange(other, b"still"), b"still")
        self.assertEqual(tunnel.log_lines("close"), [])

    def test_splice_always_delivers_the_tail_of_many_small_segments_at_once(self):
        self._run("always")

    def test_splice_auto_delivers_the_tail_of_many_small_segments_at_once(self):
        self._run("auto")


class BlockedReaderTest(unittest.TestCase):
    """Case splice-blocked-reader-no-spin."""

    SIZE = 50 * MIB
    PAUSE = 3.0
    SETTLE = 0.5  # after the reader stops, the buffers on the way fill up; then measure
    RSS_GROWTH_LIMIT_KIB = 1024  # far below the 50 MiB that unbounded buffering would take

    def _run(self, mode):
        payload = os.urandom(self.SIZE)

        def upstream_handler(conn):
            first = conn.recv(64)
            if first != b"go":
                conn.sendall(first)
                echo_handler(conn)
                return
            conn.sendall(payload)
            conn.shutdown(socket.SHUT_WR)
            while conn.recv(65536):
                pass

        upstream = Listener(upstream_handler)
        self.addCleanup(upstream.close)
        tunnel = Tunnel("--listen", "127.0.0.1:0", "--to", "127.0.0.1:%d" % upstream.port,
                        "--splice", mode)
        self.addCleanup(tunnel.stop)
        with connect(tunnel.port, timeout=10.0) as warm_up:
            self.assertEqual(exchange(warm_up, b"x"), b"x")
        rss_idle = process_rss_kib(tunnel.pid)
        client = connect(tunnel.port, timeout=10.0)
        self.addCleanup(client.close)

        client.sendall(b"go")
        head, _ = read_exactly(client, MIB)
        time.sleep(self.SETTLE)
        cpu_before = process_cpu_seconds(tunnel.pid)
        rss_samples = []
        for _ in range(5):
            time.sleep((self.PAUSE - self.SETTLE) / 5)
            rss_samples.append(process_rss_kib(tunnel.pid))
        paused_cpu = process_cpu_seconds(tunnel.pid) - cpu_before
        tail, _ = read_exactly(client, self.SIZE - len(head), timeout=30.0)
        client.settimeout(5.0)
        end = client.recv(1)

        share = paused_cpu / (self.PAUSE - self.SETTLE)
        self.assertLess(share, 0.05, "the tunnel used %.1f%% of a core while the reader was "
                        "stopped" % (share * 100))
        growth = max(rss_samples) - rss_idle
        self.assertLess(growth, self.RSS_GROWTH_LIMIT_KIB,
                        "RSS grew by %d KiB while the reader was stopped (samples %s, idle %d)"
                        % (growth, rss_samples, rss_idle))
        self.assertEqual(len(head) + len(tail), self.SIZE)
        self.assertEqual(hashlib.sha256(head + tail).digest(),
                         hashlib.sha256(payload).digest(), "bytes differ")
        self.assertEqual(end, b"")

    def test_splice_always_reader_that_stops_costs_no_cpu_and_loses_nothing(self):
        self._run("always")

    def test_splice_auto_reader_that_stops_costs_no_cpu_and_loses_nothing(self):
        self._run("auto")


class BulkBothWaysTest(unittest.TestCase):
    """64 MiB each way through an echo upstream, byte-identical, while a small connection
    keeps exchanging requests beside it."""

    TOTAL = 64 * MIB

    def _run(self, *options, connections=1):
        upstream = Listener(echo_handler)
        self.addCleanup(upstream.close)
        tunnel = Tunnel("--listen", "127.0.0.1:0", "--to", "127.0.0.1:%d" % upstream.port,
                        *options)
        self.addCleanup(tunnel.stop)
        size = self.TOTAL // connections
        results = [None] * connections

        def transfer(index):
            payload = os.urandom(size)
            with connect(tunnel.port, timeout=60.0) as client:
                def send():
                    client.sendall(payload)
                    client.shutdown(socket.SHUT_WR)

                sender = threading.Thread(target=send, daemon=True)
                sender.start()
                digest = hashlib.sha256()
                received = 0
                while True:
                    data = client.recv(1 << 20)
                    if not data:
                        break
                    digest.update(data)
                    received += len(data)
                sender.join(60)
            results[index] = (received, digest.digest() == hashlib.sha256(payload).digest())

        side = connect(tunnel.port, timeout=10.0)
        self.addCleanup(side.close)
        workers = [threading.Thread(target=transfer, args=(index,), daemon=True)
                   for index in range(connections)]
        for worker in workers:
            worker.start()
        side_replies = []
        while any(worker.is_alive() for worker in workers):
            side_replies.append(exchange(side, b"ping") == b"ping")
            time.sleep(0.02)
        for worker in workers:
            worker.join(60)

        self.assertEqual(results, [(size, True)] * connections)
        self.assertTrue(side_replies and all(side_replies), "the side connection was disturbed")
        closes = wait_for_lines(tunnel, "close", connections)
        self.assertEqual(len(closes), connections, closes)
        for line in closes:
            fields = log_fields(line)
            self.assertEqual((fields["from_client"], fields["from_upstream"]),
                             (str(size), str(size)), line)
            self.assertEqual(fields["how"], "fin", line)

    def test_64_mib_each_way_with_splice_always(self):
        self._run("--splice", "always")

    def test_64_mib_each_way_with_splice_never(self):
        self._run("--splice", "never")

    def test_64_mib_each_way_with_splice_auto(self):
        self._run("--splice", "auto")

    def test_64_mib_each_way_over_four_connections_with_two_threads(self):
        self._run("--threads", "2", connections=4)


if __name__ == "__main__":
    unittest.main()
