"""The basic relay against real loopback sockets: many clients at once, plain-TCP half-close both
ways, resets passed on as resets, and unreachable upstreams.

Every peer is a socket of this process on loopback, except the black-holed upstream, which lives
in a network namespace made here and deleted afterwards.
"""

import hashlib
import os
import socket
import struct
import threading
import time
import unittest

from tunnel_harness import (CommandTunnel, Listener, NetNamespace, Tunnel, connect, echo_handler,
                            free_port, log_fields, read_exactly, recv_all, request_stats,
                            wait_for_lines)

CLIENTS = 200


def abort(conn):
    """Closes with a reset (SO_LINGER 0) instead of a FIN."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def close_line_for(tunnel, client_port):
    lines = [line for line in tunnel.log_lines("close") if ":%d " % client_port in line]
    return log_fields(lines[0]) if len(lines) == 1 else {"lines": lines}


def ends_with_reset(conn, timeout=5.0):
    """(how the stream ended: "rst", "fin" or "open", seconds waited)."""
    started = time.monotonic()
    conn.settimeout(timeout)
    try:
        while conn.recv(65536):
            pass
        return "fin", time.monotonic() - started
    except ConnectionResetError:
        return "rst", time.monotonic() - started
    except socket.timeout:
        return "open", time.monotonic() - started


def connect_and_wait_for_the_end(port):
    """(how a fresh client's stream ended, seconds from connect() to the end). The reset may
    already arrive while connect() completes."""
    started = time.monotonic()
    try:
        with connect(port) as client:
            ended, _ = ends_with_reset(client)
    except ConnectionResetError:
        ended = "rst"
    return ended, time.monotonic() - started


class ManyClientsTest(unittest.TestCase):

    def test_two_hundred_clients_at_once_each_get_their_own_bytes_back(self):
        upstream = Listener(echo_handler, backlog=CLIENTS + 56)
        self.addCleanup(upstream.close)
        tunnel = Tunnel("--listen", "127.0.0.1:0", "--to", "127.0.0.1:%d" % upstream.port)
        self.addCleanup(tunnel.stop)
        payloads = [b"%04d" % index + os.urandom(1024 * (1 + index % 48)) for index in
                    range(CLIENTS)]
        clients = []
        for _ in range(CLIENTS):
            client = connect(tunnel.port, timeout=20.0)
            self.addCleanup(client.close)
            clients.append(client)
        for index, client in enumerate(clients):  # every one relayed before any finishes
            client.sendall(payloads[index][:4])
            self.assertEqual(read_exactly(client, 4), payloads[index][:4])
        results = [None] * CLIENTS

        def run(index):
            client = clients[index]
            client.sendall(payloads[index][4:])
            client.shutdown(socket.SHUT_WR)
            results[index] = payloads[index][:4] + recv_all(client, timeout=20.0)

        active = request_stats(tunnel)["active"]
        threads = [threading.Thread(target=run, args=(index,), daemon=True)
                   for index in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        closes = wait_for_lines(tunnel, "close", CLIENTS, timeout=10.0)

        self.assertEqual(active, str(CLIENTS), "clients open at once")
        for index in range(CLIENTS):
            self.assertEqual(hashlib.sha256(results[index] or b"").hexdigest(),
                             hashlib.sha256(payloads[index]).hexdigest(), "client %d" % index)
        self.assertEqual(len(closes), CLIENTS)
        for index, client in enumerate(clients):
            fields = close_line_for(tunnel, client.getsockname()[1])
            size = str(len(payloads[index]))
            self.assertEqual((fields.get("from_client"), fields.get("from_upstream"),
                              fields.get("closed_by"), fields.get("how")),
                             (size, size, "client", "fin"), fields)
        self.assertEqual(upstream.errors, [])


class HalfCloseTest(unittest.TestCase):

    def test_client_half_close_still_gets_the_upstreams_later_reply_then_eof(self):
        for mode in ("never", "always"):
            with self.subTest(splice=mode):
                self._check_client_half_close(mode)

    def _check_client_half_close(self, mode):
        request = os.urandom(1000)
        seen = {}

        def answer_after_eof(conn):
            seen["request"] = recv_all(conn)
            digest = hashlib.sha256(seen["request"]).digest()
            conn.sendall(b"first:" + digest)
            time.sleep(0.1)
            conn.sendall(b"second:" + bytes(4000))
            conn.shutdown(socket.SHUT_WR)

        upstream = Listener(answer_after_eof)
        self.addCleanup(upstream.close)
        tunnel = Tunnel("--listen", "127.0.0.1:0", "--to", "127.0.0.1:%d" % upstream.port,
                        "--splice", mode)
        self.addCleanup(tunnel.stop)
        client = connect(tunnel.port)
        self.addCleanup(client.close)

        client.sendall(request)
        client.shutdown(socket.SHUT_WR)
        reply = recv_all(client)

        expected = b"first:" + hashlib.sha256(request).digest() + b"second:" + bytes(4000)
        self.assertEqual(reply, expected)
        self.assertEqual(seen["request"], request)
        wait_for_lines(tunnel, "close", 1)
        fields = close_line_for(tunnel, client.getsockname()[1])
        self.assertEqual((fields.get("from_client"), fields.get("from_upstream"),
                          fields.get("closed_by"), fields.get("how")),
                         ("1000", str(len(expected)), "client", "fin"), fields)

    def test_upstream_half_close_still_reads_what_the_client_sends_afterwards(self):
        for mode in ("never", "always"):
            with self.subTest(splice=mode):
                self._check_upstream_half_close(mode)

    def _check_upstream_half_close(self, mode):
        greeting = os.urandom(1000)
        late = os.urandom(1000)
        seen = {}
        done = threading.Event()

        def greet_then_listen(conn):
            conn.sendall(greeting)
            conn.shutdown(socket.SHUT_WR)
            seen["late"] = recv_all(conn)
            done.set()

        upstream = Listener(greet_then_listen)
        self.addCleanup(upstream.close)
        tunnel = Tunnel("--listen", "127.0.0.1:0", "--to", "127.0.0.1:%d" % upstream.port,
                        "--splice", mode)
        self.addCleanup(tunnel.stop)
        client = connect(tunnel.port)
        self.addCleanup(client.close)

        received = recv_all(client)
        time.sleep(0.1)  # the client answers well after the upstream's FIN reached it
        client.sendall(late[:500])
        client.sendall(late[500:])
        client.shutdown(socket.SHUT_WR)
        finished = done.wait(5.0)

        self.assertEqual(received, greeting)
        self.assertTrue(finished, "the upstream never saw the client's FIN")
        self.assertEqual(seen["late"], late)
        wait_for_lines(tunnel, "close", 1)
        fields = close_line_for(tunnel, client.getsockname()[1])
        self.assertEqual((fields.get("from_client"), fields.get("from_upstream"),
                          fields.get("closed_by"), fields.get("how")),
                         ("1000", "1000", "upstream", "fin"), fields)


class ResetTest(unittest.TestCase):
    # The upstream's reset while the client only reads is in test_upstream_faults.py.

    def test_client_reset_reaches_the_upstream_as_a_reset(self):
        for mode in ("never", "always"):
            with self.subTest(splice=mode):
                self._check_client_reset(mode)

    def _check_client_reset(self, mode):
        got_bytes = threading.Event()
        outcome = {}

        def read_until_error(conn):
            conn.settimeout(5.0)
            try:
                conn.recv(64)
                got_bytes.set()
                outcome["end"] = "fin" if conn.recv(64) == b"" else "data"
            except OSError as error:
                outcome["end"] = type(error).__name__

        upstream = Listener(read_until_error)
        self.addCleanup(upstream.close)
        tunnel = Tunnel("--listen", "127.0.0.1:0", "--to", "127.0.0.1:%d" % upstream.port,
                        "--splice", mode)
        self.addCleanup(tunnel.stop)
        client = connect(tunnel.port)
        client_port = client.getsockname()[1]

        client.sendall(b"hello")
        self.assertTrue(got_bytes.wait(5.0))
        abort(client)
        wait_for_lines(tunnel, "close", 1)
        deadline = time.monotonic() + 5
        while "end" not in outcome and time.monotonic() < deadline:
            time.sleep(0.01)

        self.assertEqual(outcome.get("end"), "ConnectionResetError")
        fields = close_line_for(tunnel, client_port)
        self.assertEqual((fields.get("from_client"), fields.get("closed_by"), fields.get("how")),
                         ("5", "client", "rst"), fields)

    def test_client_reset_while_the_upstream_streams_reaches_the_upstream_as_a_reset(self):
        outcome = {}

        def stream_until_error(conn):
            chunk = bytes(65536)
            deadline = time.monotonic() + 10
            try:
                while time.monotonic() < deadline:
                    conn.sendall(chunk)
                outcome["end"] = "still sending"
            except OSError as error:
                outcome["end"] = type(error).__name__

        upstream = Listener(stream_until_error)
        self.addCleanup(upstream.close)
        tunnel = Tunnel("--listen", "127.0.0.1:0", "--to", "127.0.0.1:%d" % upstream.port)
        self.addCleanup(tunnel.stop)
        client = connect(tunnel.port)
        client_port = client.getsockname()[1]

        self.assertEqual(len(read_exactly(client, 256 * 1024)), 256 * 1024)
        abort(client)
        wait_for_lines(tunnel, "close", 1)
        deadline = time.monotonic() + 5
        while "end" not in outcome and time.monotonic() < deadline:
            time.sleep(0.01)

        # A sender learns of the reset from its next send: ECONNRESET, or EPIPE when the reset
        # arrived between two sends; which one is a matter of timing. The idle-upstream test
        # above checks the reset itself.
        self.assertIn(outcome.get("end"), ("ConnectionResetError", "BrokenPipeError"))
        fields = close_line_for(tunnel, client_port)
        self.assertEqual((fields.get("closed_by"), fields.get("how")), ("client", "rst"), fields)

    def test_upstream_reset_while_the_client_sends_reaches_the_client_as_a_reset(self):
        def read_then_abort(conn):
            read_exactly(conn, 4096)
            abort(conn)

        upstream = Listener(read_then_abort)
        self.addCleanup(upstream.close)
        tunnel = Tunnel("--listen", "127.0.0.1:0", "--to", "127.0.0.1:%d" % upstream.port)
        self.addCleanup(tunnel.stop)
        client = connect(tunnel.port)
        self.addCleanup(client.close)
        client_port = client.getsockname()[1]

        ended = "open"
        deadline = time.monotonic() + 5
        try:
            while time.monotonic() < deadline:
                client.sendall(bytes(4096))
                time.sleep(0.01)
        except ConnectionResetError:
            ended = "rst"
        except BrokenPipeError:
            ended = "rst after epipe"
        wait_for_lines(tunnel, "close", 1)

        self.assertEqual(ended, "rst")
        fields = close_line_for(tunnel, client_port)
        self.assertEqual((fields.get("closed_by"), fields.get("how")), ("upstream", "rst"), fields)


class UnreachableUpstreamTest(unittest.TestCase):

    def test_port_with_nothing_listening_resets_the_client_within_100_ms(self):
        port = free_port()
        tunnel = Tunnel("--listen", "127.0.0.1:0", "--to", "127.0.0.1:%d" % port)
        self.addCleanup(tunnel.stop)

        outcomes = [connect_and_wait_for_the_end(tunnel.port) for _ in range(3)]
        failures = wait_for_lines(tunnel, "upstream_failed", 1)

        for ended, seconds in outcomes:
            self.assertEqual(ended, "rst", outcomes)
            self.assertLess(seconds, 0.1, outcomes)
        fields = log_fields(failures[0])
        self.assertEqual(fields["reason"], "refused", failures[0])
        self.assertIn("refused 127.0.0.1:%d" % port, fields["detail"])
        self.assertEqual(tunnel.log_lines("close"), [])

    def test_upstream_that_never_answers_the_syn_closes_the_client_after_the_connect_timeout(self):
        # A namespace whose veth peer takes the SYNs and drops them: 198.51.100.2 has a fixed
        # neighbour entry for a MAC address nobody owns, so no ARP failure and no ICMP either.
        space = NetNamespace("ttrelay%d" % os.getpid())
        self.addCleanup(space.close)
        space.ip("link", "add", "bh0", "type", "veth", "peer", "name", "bh1")
        space.ip("addr", "add", "198.51.100.1/24", "dev", "bh0")
        space.ip("link", "set", "bh0", "up")
        space.ip("link", "set", "bh1", "up")
        space.ip("neigh", "add", "198.51.100.2", "lladdr", "02:00:00:00:00:02", "dev", "bh0",
                 "nud", "permanent")
        tunnel = CommandTunnel(space.exec_prefix(), "--listen", "127.0.0.1:0",
                               "--to", "198.51.100.2:443", "--connect-timeout", "300ms")
        self.addCleanup(tunnel.stop)

        ended, seconds = space.call(connect_and_wait_for_the_end, tunnel.port)
        failures = wait_for_lines(tunnel, "upstream_failed", 1)

        self.assertEqual(ended, "rst")
        self.assertGreaterEqual(seconds, 0.29)
        self.assertLess(seconds, 0.8, "closed %.3fs after connecting" % seconds)
        self.assertEqual(len(failures), 1, failures)
        fields = log_fields(failures[0])
        self.assertEqual(fields["reason"], "timeout", failures[0])
        self.assertIn("198.51.100.2:443", fields["detail"])


if __name__ == "__main__":
    unittest.main()
