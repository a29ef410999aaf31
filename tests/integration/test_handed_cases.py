"""Failing scenarios found by using the tunnel as its users do, each kept as a test:

- a half-closed connection has no hidden timer: a reply that comes seconds after the client's FIN,
  or trickles in after it, arrives whole;
- passing an upstream's reset on does not swallow the bytes already relayed to the client;
- a flood of connections to a refused upstream gets every client a prompt reset and folds the
  log to about one line a second, whose counts add up;
- when the upstream is down, a TLS client sees a reset (not a clean end) and the log names why.

Every peer is on loopback; name lookups of the tunnel read a private /etc/hosts (no DNS query).
"""

import datetime
import fcntl
import os
import socket
import subprocess
import tempfile
import termios
import threading
import time
import unittest

from tunnel_harness import (CommandTunnel, Listener, Tunnel, connect, free_port, log_fields,
                            private_resolver_prefix, request_stats, wait_for_lines)

PEER_TIMEOUT = 15.0


def read_until_end(client, piece=65536, pause=0.0):
    """Reads `piece` bytes at a time, sleeping `pause` between reads, until the stream ends;
    returns (bytes, "fin" | "rst" | "still open")."""
    chunks = []
    try:
        while True:
            data = client.recv(piece)
            if not data:
                return b"".join(chunks), "fin"
            chunks.append(data)
            if pause:
                time.sleep(pause)
    except ConnectionResetError:
        return b"".join(chunks), "rst"
    except socket.timeout:
        return b"".join(chunks), "still open"


def queued(conn, request):
    """SIOCINQ / SIOCOUTQ of a socket (bytes unread / bytes not yet acknowledged)."""
    return int.from_bytes(fcntl.ioctl(conn.fileno(), request, b"\0" * 4), "little", signed=True)


def wait_until(condition, timeout):
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.002)
    return condition()


def pattern(size, seed):
    return bytes((seed + i * 7) % 251 for i in range(size))


class HalfCloseHasNoHiddenTimerTest(unittest.TestCase):
    """Case half-close-no-hidden-timer: socat's 0.5 s timer after a FIN lost `docker run` output."""

    REQUEST = b"GET /events HTTP/1.0\r\n\r\n"

    def _upstream(self, reply):
        """An upstream that reads the request to the client's FIN, then calls reply(conn)."""
        def handler(conn):
            conn.settimeout(PEER_TIMEOUT)
            while conn.recv(65536):
                pass
            reply(conn)
        upstream = Listener(handler)
        self.addCleanup(upstream.close)
        return upstream

    def _exchange(self, tunnel):
        client = connect(tunnel.port, timeout=PEER_TIMEOUT)
        self.addCleanup(client.close)
        client.sendall(self.REQUEST)
        client.shutdown(socket.SHUT_WR)
        return read_until_end(client)

    def test_reply_three_seconds_after_the_clients_fin_arrives_whole(self):
        reply = pattern(20000, 1)
        upstream = self._upstream(lambda conn: (time.sleep(3.0), conn.sendall(reply)))
        tunnel = Tunnel("--listen", "127.0.0.1:0", "--to", "127.0.0.1:%d" % upstream.port)
        self.addCleanup(tunnel.stop)

        started = time.monotonic()
        received, ended = self._exchange(tunnel)
        waited = time.monotonic() - started

        self.assertEqual((len(received), ended), (len(reply), "fin"))
        self.assertEqual(received, reply)
        self.assertGreaterEqual(waited, 2.9)
        fields = log_fields(wait_for_lines(tunnel, "close", 1)[0])
        self.assertEqual((fields["closed_by"], fields["how"]), ("client", "fin"), fields)
        self.assertEqual(fields["from_upstream"], str(len(reply)))

    def test_64_kib_in_1_kib_pieces_every_100_ms_after_the_fin_arrives_whole(self):
        pieces = [pattern(1024, index) for index in range(64)]

        def trickle(conn):
            for piece in pieces:
                conn.sendall(piece)
                time.sleep(0.1)
        upstream = self._upstream(trickle)
        tunnel = Tunnel("--listen", "127.0.0.1:0", "--to", "127.0.0.1:%d" % upstream.port)
        self.addCleanup(tunnel.stop)

        received, ended = self._exchange(tunnel)

        self.assertEqual((len(received), ended), (64 * 1024, "fin"))
        self.assertEqual(received, b"".join(pieces))
        fields = log_fields(wait_for_lines(tunnel, "close", 1)[0])
        self.assertEqual(fields["how"], "fin", fields)

    def test_only_an_explicit_half_close_timeout_ends_it_and_the_log_names_it(self):
        upstream = self._upstream(lambda conn: (time.sleep(3.0), conn.sendall(b"too late")))
        tunnel = Tunnel("--listen", "127.0.0.1:0", "--to", "127.0.0.1:%d" % upstream.port,
                        "--half-close-timeout", "1s")
        self.addCleanup(tunnel.stop)

        started = time.monotonic()
        received, _ = self._exchange(tunnel)
        waited = time.monotonic() - started

        self.assertEqual(received, b"")
        self.assertLess(waited, 2.5)
        fields = log_fields(wait_for_lines(tunnel, "close", 1)[0])
        self.assertEqual(fields["how"], "half-close-timeout", fields)


class ResetKeepsRelayedBytesTest(unittest.TestCase):
    """Case reset-keeps-relayed-bytes: a response followed by the upstream's abortive close must
    not reach the client as a short read."""

    ITERATIONS = 200
    CONCURRENCY = 8  # iterations at a time, so that 200 slow readers take seconds, not minutes
    REPLY = pattern(512 * 1024, 3)

    def _upstream_handler(self, conn):
        # Write the reply without reading the request; close once the tunnel has acknowledged all
        # of it (so all 524 288 bytes are the tunnel's to deliver) and the request sits unread
        # (so the kernel answers the close with a reset).
        conn.sendall(self.REPLY)
        wait_until(lambda: queued(conn, termios.TIOCOUTQ) == 0, PEER_TIMEOUT)
        wait_until(lambda: queued(conn, termios.FIONREAD) >= 4096, PEER_TIMEOUT)

    def _iteration(self, port, outcomes):
        try:
            with connect(port, timeout=PEER_TIMEOUT) as client:
                client.sendall(pattern(4096, 9))
                received, ended = read_until_end(client, piece=16384, pause=0.01)
                outcomes.append((client.getsockname()[1], len(received),
                                 received == self.REPLY, ended))
        except OSError as error:
            outcomes.append((None, 0, False, repr(error)))

    def _run_iterations(self, mode):
        upstream = Listener(self._upstream_handler)
        self.addCleanup(upstream.close)
        tunnel = Tunnel("--listen", "127.0.0.1:0", "--to", "127.0.0.1:%d" % upstream.port,
                        "--splice", mode)
        self.addCleanup(tunnel.stop)
        outcomes = []
        for start in range(0, self.ITERATIONS, self.CONCURRENCY):
            batch = [threading.Thread(target=self._iteration, args=(tunnel.port, outcomes))
                     for _ in range(min(self.CONCURRENCY, self.ITERATIONS - start))]
            for thread in batch:
                thread.start()
            for thread in batch:
                thread.join(60)
        closes = wait_for_lines(tunnel, "close", self.ITERATIONS)
        return outcomes, closes, upstream

    def _check(self, mode):
        outcomes, closes, upstream = self._run_iterations(mode)

        short = [each for each in outcomes if each[1:3] != (len(self.REPLY), True)]
        self.assertEqual(len(outcomes), self.ITERATIONS)
        self.assertEqual(len(short), 0, "%d of %d short or wrong reads, e.g. (port, bytes, "
                         "intact, end) %s" % (len(short), self.ITERATIONS, short[:3]))
        self.assertTrue(all(each[3] in ("fin", "rst") for each in outcomes), outcomes)
        self.assertEqual(upstream.errors, [])
        self.assertEqual(len(closes), self.ITERATIONS)
        for line in closes:
            fields = log_fields(line)
            self.assertEqual(fields["from_upstream"], str(len(self.REPLY)), line)
            self.assertEqual((fields["closed_by"], fields["how"]), ("upstream", "rst"), line)

    def test_every_iteration_gets_all_bytes_with_splice_always(self):
        self._check("always")

    def test_every_iteration_gets_all_bytes_with_splice_auto(self):
        self._check("auto")


class RefusedUpstreamFloodTest(unittest.TestCase):
    """Case upstream-flood-of-failures-log: 5 000 failures must not become 5 000 log lines."""

    CONNECTIONS = 5000
    CLIENT_THREADS = 4
    TIME_BOUND = 60.0
    PROMPT = 1.0  # seconds from connect to the reset, each client

    def _client_loop(self, port, count, deadline, outcomes):
        for _ in range(count):
            if time.monotonic() > deadline:
                return
            started = time.monotonic()
            try:
                with connect(port, timeout=5.0) as client:
                    ended = "fin" if client.recv(1) == b"" else "data"
            except ConnectionResetError:
                ended = "rst"
            except OSError as error:
                ended = repr(error)
            outcomes.append((ended, time.monotonic() - started))

    def test_five_thousand_refusals_each_get_a_prompt_reset_and_few_folded_log_lines(self):
        refused_port = free_port()
        tunnel = Tunnel("--listen", "127.0.0.1:0", "--to", "127.0.0.1:%d" % refused_port)
        self.addCleanup(tunnel.stop)
        outcomes = []
        deadline = time.monotonic() + self.TIME_BOUND
        share = self.CONNECTIONS // self.CLIENT_THREADS
        clients = [threading.Thread(target=self._client_loop,
                                    args=(tunnel.port, share, deadline, outcomes))
                   for _ in range(self.CLIENT_THREADS)]

        started = time.monotonic()
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(self.TIME_BOUND + 10)
        elapsed = time.monotonic() - started
        stats = request_stats(tunnel)
        status, stderr = tunnel.stop()

        self.assertEqual(len(outcomes), self.CONNECTIONS, "flood did not finish in %.0fs"
                         % self.TIME_BOUND)
        ends = {}
        for ended, _ in outcomes:
            ends[ended] = ends.get(ended, 0) + 1
        self.assertEqual(ends, {"rst": self.CONNECTIONS})
        slowest = max(seconds for _, seconds in outcomes)
        self.assertLess(slowest, self.PROMPT, "slowest client waited %.2fs" % slowest)
        self.assertEqual(status, 0)
        self.assertEqual((stats["refused"], stats["upstream_failures"], stats["active"]),
                         (str(self.CONNECTIONS), str(self.CONNECTIONS), "0"), stats)
        failures = [line for line in stderr.splitlines() if " upstream_failed " in line]
        # One line a second while the flood lasts, its first line at once, one flushed at exit.
        self.assertLessEqual(len(failures), int(elapsed) + 3,
                             "%d lines in %.1fs" % (len(failures), elapsed))
        self.assertLess(len(stderr), 16 * 1024, "stderr grew to %d bytes" % len(stderr))
        # Lines written while the flood lasts (those with an id) are a second apart or more.
        stamps = [datetime.datetime.fromisoformat(line.split()[0].rstrip("Z"))
                  for line in failures if " id=" in line]
        gaps = [(later - earlier).total_seconds() for earlier, later in zip(stamps, stamps[1:])]
        self.assertTrue(all(gap >= 0.99 for gap in gaps), gaps)
        counts = [log_fields(line) for line in failures]
        self.assertTrue(all(fields.get("reason") == "refused" for fields in counts), failures)
        # The sum includes the line flushed at exit for what was still folded then.
        self.assertEqual(sum(int(fields["count"]) for fields in counts), self.CONNECTIONS,
                         failures)


class UpstreamDownClientSeesWhyTest(unittest.TestCase):
    """Case upstream-down-client-sees-why: a clean end made `gh` print only `EOF`."""

    def _s_client(self, port):
        env = {key: value for key, value in os.environ.items()
               if key not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
        result = subprocess.run(
            ["openssl", "s_client", "-connect", "127.0.0.1:%d" % port,
             "-servername", "localhost"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, timeout=20)
        return result.returncode, result.stdout + result.stderr

    def _assert_client_sees_a_reset(self, port):
        # A TLS client: its ClientHello meets a reset, not an unexplained end of stream.
        status, output = self._s_client(port)
        self.assertNotEqual(status, 0, output)
        self.assertIn("errno=104", output, "s_client did not report a reset")
        self.assertNotIn("unexpected eof", output)
        # A client that sends nothing: a clean close would read as b"" here; a reset raises,
        # in connect() already when it comes before the handshake is seen as complete.
        with self.assertRaises(ConnectionResetError):
            with connect(port, timeout=PEER_TIMEOUT) as silent:
                silent.recv(1)

    def test_refused_upstream_resets_the_tls_client_and_logs_the_address(self):
        refused_port = free_port()
        tunnel = Tunnel("--listen", "127.0.0.1:0", "--to", "127.0.0.1:%d" % refused_port)
        self.addCleanup(tunnel.stop)

        self._assert_client_sees_a_reset(tunnel.port)

        _, stderr = tunnel.stop()
        failures = [line for line in stderr.splitlines() if " upstream_failed " in line]
        self.assertGreaterEqual(len(failures), 1, stderr)
        fields = log_fields(failures[0])
        self.assertEqual(fields["reason"], "refused", failures[0])
        self.assertIn("refused 127.0.0.1:%d" % refused_port, fields["detail"])
        self.assertIn("Connection refused", fields["detail"])

    def test_name_that_does_not_resolve_resets_the_tls_client_and_logs_the_name(self):
        directory = tempfile.mkdtemp(prefix="tcptunnel-cases-")
        self.addCleanup(subprocess.run, ["rm", "-rf", directory])
        prefix, _ = private_resolver_prefix(directory, "127.0.0.1 localhost\n")
        tunnel = CommandTunnel(prefix, "--listen", "127.0.0.1:0",
                               "--to", "proxy.tcptunnel.invalid:18443")
        self.addCleanup(tunnel.stop)

        self._assert_client_sees_a_reset(tunnel.port)

        _, stderr = tunnel.stop()
        failures = [line for line in stderr.splitlines() if " upstream_failed " in line]
        self.assertGreaterEqual(len(failures), 1, stderr)
        fields = log_fields(failures[0])
        self.assertEqual(fields["reason"], "dns-nxdomain", failures[0])
        self.assertIn("proxy.tcptunnel.invalid: no such host", fields["detail"])


if __name__ == "__main__":
    unittest.main()
