"""Idle and half-close timeouts: silent or abandoned connections end with a logged reason;
active and legitimately half-closed connections are left alone.

Every peer is a loopback socket of this process; the tunnel is the built binary.
"""

import socket
import threading
import time
import unittest

from tunnel_harness import (Listener, Tunnel, echo_handler, log_fields, request_stats,
                            wait_for_lines)


def connect(port, timeout=5.0):
    client = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    client.settimeout(timeout)
    return client


def wait_for_end(client, timeout):
    """Reads until the connection ends; returns (seconds waited, bytes read, how it ended)."""
    started = time.monotonic()
    client.settimeout(timeout)
    received = b""
    try:
        while True:
            data = client.recv(65536)
            if not data:
                return time.monotonic() - started, received, "fin"
            received += data
    except ConnectionResetError:
        return time.monotonic() - started, received, "rst"
    except socket.timeout:
        return time.monotonic() - started, received, "still open"


def trickle(client, count, interval, results):
    """Sends one byte every `interval` seconds and reads each echo; appends True per echo."""
    for index in range(count):
        byte = bytes([ord("a") + index % 26])
        client.sendall(byte)
        results.append(client.recv(1) == byte)
        time.sleep(interval)


class IdleTimeoutTest(unittest.TestCase):

    def setUp(self):
        self.upstream = Listener(echo_handler)
        self.addCleanup(self.upstream.close)

    def test_silent_connection_ends_after_the_idle_timeout_while_a_trickling_one_lives_on(self):
        tunnel = Tunnel("--listen", "127.0.0.1:0", "--to", "127.0.0.1:%d" % self.upstream.port,
                        "--idle-timeout", "1s")
        self.addCleanup(tunnel.stop)
        silent = connect(tunnel.port)
        self.addCleanup(silent.close)
        active = connect(tunnel.port)
        self.addCleanup(active.close)
        silent.sendall(b"hello")
        self.assertEqual(silent.recv(5), b"hello")
        echoes = []
        trickler = threading.Thread(target=trickle, args=(active, 10, 0.3, echoes), daemon=True)

        trickler.start()
        waited, late_bytes, ended = wait_for_end(silent, timeout=4.0)
        trickler.join(10)

        self.assertEqual(ended, "fin", "silent connection: %s after %.2fs" % (ended, waited))
        self.assertEqual(late_bytes, b"")
        self.assertGreaterEqual(waited, 0.9)
        self.assertLess(waited, 1.8, "idle connection ended %.2fs after its last byte" % waited)
        self.assertEqual(echoes, [True] * 10, "the trickling connection lost bytes")
        active.sendall(b"z")
        self.assertEqual(active.recv(1), b"z")
        closes = wait_for_lines(tunnel, "close", 1)
        self.assertEqual(len(closes), 1, closes)
        fields = log_fields(closes[0])
        self.assertEqual((fields["closed_by"], fields["how"]), ("tunnel", "idle-timeout"))
        self.assertEqual((fields["from_client"], fields["from_upstream"]), ("5", "5"))

    def test_bytes_from_the_upstream_alone_keep_a_connection_alive(self):
        stop = threading.Event()

        def ticker(conn):
            while not stop.is_set():
                conn.sendall(b".")
                time.sleep(0.3)

        upstream = Listener(ticker)
        self.addCleanup(upstream.close)
        self.addCleanup(stop.set)
        tunnel = Tunnel("--listen", "127.0.0.1:0", "--to", "127.0.0.1:%d" % upstream.port,
                        "--idle-timeout", "1s")
        self.addCleanup(tunnel.stop)
        client = connect(tunnel.port)
        self.addCleanup(client.close)

        received = b""
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            data = client.recv(64)
            if not data:
                break
            received += data

        self.assertGreaterEqual(len(received), 8, "the connection ended after %d ticks"
                                % len(received))
        self.assertEqual(tunnel.log_lines("close"), [])

    def test_bytes_from_the_client_alone_keep_a_connection_alive(self):
        seen = []

        def sink(conn):
            while True:
                data = conn.recv(64)
                if not data:
                    return
                seen.append(data)

        upstream = Listener(sink)
        self.addCleanup(upstream.close)
        tunnel = Tunnel("--listen", "127.0.0.1:0", "--to", "127.0.0.1:%d" % upstream.port,
                        "--idle-timeout", "1s")
        self.addCleanup(tunnel.stop)
        client = connect(tunnel.port)
        self.addCleanup(client.close)

        for _ in range(10):
            client.sendall(b".")
            time.sleep(0.3)

        self.assertEqual(b"".join(seen), b"." * 10)
        self.assertEqual(tunnel.log_lines("close"), [])
        client.shutdown(socket.SHUT_WR)
        self.assertEqual(wait_for_end(client, 3.0)[2], "fin")


class HalfCloseTimeoutTest(unittest.TestCase):

    def test_half_closed_forever_connections_end_and_free_their_slots(self):
        # Case half-closed-forever: the upstream reads, never writes, never closes; a request
        # (a line starting with GET) is the only thing it answers.
        release = threading.Event()
        self.addCleanup(release.set)

        def upstream_handler(conn):
            data = conn.recv(64)
            if data.startswith(b"GET"):
                conn.sendall(b"served\n")
                release.wait(20)
                return
            while conn.recv(64):
                pass
            release.wait(20)

        upstream = Listener(upstream_handler)
        self.addCleanup(upstream.close)
        tunnel = Tunnel("--listen", "127.0.0.1:0", "--to", "127.0.0.1:%d" % upstream.port,
                        "--max-connections", "4", "--half-close-timeout", "1s")
        self.addCleanup(tunnel.stop)
        abandoned = []
        for _ in range(4):
            client = connect(tunnel.port)
            self.addCleanup(client.close)
            client.sendall(b"x")
            client.shutdown(socket.SHUT_WR)
            abandoned.append(client)
        half_closed_at = time.monotonic()

        fifth = connect(tunnel.port)
        self.addCleanup(fifth.close)
        fifth.sendall(b"GET /\n")
        fifth.settimeout(5.0)
        reply = fifth.recv(64)
        served_after = time.monotonic() - half_closed_at
        endings = [wait_for_end(client, 3.0)[2] for client in abandoned]
        closes = wait_for_lines(tunnel, "close", 4)
        stats = request_stats(tunnel)

        self.assertEqual(reply, b"served\n")
        self.assertLess(served_after, 2.0, "fifth served %.2fs after the half-closes"
                        % served_after)
        self.assertNotIn("still open", endings)
        self.assertEqual(len(closes), 4, closes)
        for line in closes:
            fields = log_fields(line)
            # closed_by may name the side that half-closed first; `how` must give the reason.
            self.assertEqual(fields["how"], "half-close-timeout", line)
            self.assertEqual(fields["from_client"], "1", line)
        self.assertEqual(stats["active"], "1", stats)
        fifth.close()
        release.set()
        self.assertEqual(len(wait_for_lines(tunnel, "close", 5)), 5)
        self.assertEqual(request_stats(tunnel)["active"], "0")

    def test_upstream_half_close_left_open_by_the_client_ends_after_the_timeout(self):
        upstream_done = threading.Event()

        def reply_and_finish(conn):
            conn.recv(64)
            conn.sendall(b"bye")
            conn.shutdown(socket.SHUT_WR)
            while conn.recv(64):
                pass
            upstream_done.set()

        upstream = Listener(reply_and_finish)
        self.addCleanup(upstream.close)
        tunnel = Tunnel("--listen", "127.0.0.1:0", "--to", "127.0.0.1:%d" % upstream.port,
                        "--half-close-timeout", "1s")
        self.addCleanup(tunnel.stop)
        client = connect(tunnel.port)
        self.addCleanup(client.close)
        other = connect(tunnel.port)
        self.addCleanup(other.close)

        client.sendall(b"hi")
        _, received, ended = wait_for_end(client, 4.0)
        finished_at = time.monotonic()
        closes = wait_for_lines(tunnel, "close", 1, timeout=4.0)
        ended_after = time.monotonic() - finished_at

        self.assertEqual((received, ended), (b"bye", "fin"))
        self.assertEqual(len(closes), 1, closes)
        self.assertGreaterEqual(ended_after, 0.8)
        self.assertLess(ended_after, 2.0)
        fields = log_fields(closes[0])
        self.assertEqual(fields["how"], "half-close-timeout", closes[0])
        self.assertTrue(upstream_done.wait(2.0), "the upstream never saw the end")
        other.sendall(b"x")
        self.assertEqual(other.recv(64), b"bye")

    def test_without_a_half_close_timeout_a_half_closed_connection_stays_up(self):
        def late_reply(conn):
            data = b""
            while True:
                chunk = conn.recv(64)
                if not chunk:
                    break
                data += chunk
            time.sleep(2.5)
            conn.sendall(b"late:" + data)

        upstream = Listener(late_reply)
        self.addCleanup(upstream.close)
        tunnel = Tunnel("--listen", "127.0.0.1:0", "--to", "127.0.0.1:%d" % upstream.port)
        self.addCleanup(tunnel.stop)
        client = connect(tunnel.port)
        self.addCleanup(client.close)

        client.sendall(b"question")
        client.shutdown(socket.SHUT_WR)
        waited, received, ended = wait_for_end(client, 6.0)

        self.assertEqual((received, ended), (b"late:question", "fin"))
        self.assertGreaterEqual(waited, 2.4)
        closes = wait_for_lines(tunnel, "close", 1)
        self.assertEqual(len(closes), 1, closes)
        self.assertEqual(log_fields(closes[0])["how"], "fin")


if __name__ == "__main__":
    unittest.main()
