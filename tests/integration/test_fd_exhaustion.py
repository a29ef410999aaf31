"""Case fd-exhaustion-no-spin: out of file descriptors the tunnel backs off, does not spin, logs
a few rate-limited lines and recovers by itself.

The tunnel runs under `prlimit --nofile=48:48` (soft and hard limit 48, so it cannot raise its
own). Three runs: the connection limit derived from that fd limit; an explicit
`--max-connections 1000` that lets the fd table run out; and the same with the soft limit
trimmed by one where needed so that the last free descriptor goes to a connection's upstream
socket and the next accept(2) itself fails with EMFILE (the back-off path). Every peer is a
loopback socket of this process.
"""

import socket
import subprocess
import time
import unittest

from tunnel_harness import (CommandTunnel, Listener, echo_handler, log_fields,
                            process_cpu_seconds, process_fd_count)

FD_LIMIT = 48
CLIENTS = 60
WINDOW = 2.0


def connect_and_send(port):
    """A client that has sent one byte; None when the tunnel reset it straight away."""
    try:
        client = socket.create_connection(("127.0.0.1", port), timeout=5.0)
        client.sendall(b"x")
        return client
    except ConnectionResetError:
        return None


class FdExhaustionTest(unittest.TestCase):

    def setUp(self):
        self.upstream = Listener(echo_handler)
        self.addCleanup(self.upstream.close)
        self.clients = []
        self.addCleanup(self._close_clients)

    def _close_clients(self):
        for client in self.clients:
            if client is not None:
                client.close()
        self.clients = []

    def _start(self, *options):
        tunnel = CommandTunnel(["prlimit", "--nofile=%d:%d" % (FD_LIMIT, FD_LIMIT)],
                               "--listen", "127.0.0.1:0",
                               "--to", "127.0.0.1:%d" % self.upstream.port, *options)
        self.addCleanup(tunnel.stop)
        # One connection first, so that descriptors made lazily are counted in the base.
        warm_up = socket.create_connection(("127.0.0.1", tunnel.port), timeout=5.0)
        warm_up.sendall(b"w")
        self.assertEqual(warm_up.recv(1), b"w")
        warm_up.close()
        deadline = time.monotonic() + 5.0
        while not tunnel.log_lines("close") and time.monotonic() < deadline:
            time.sleep(0.02)
        return tunnel

    def _run_case(self, tunnel):
        """Holds 60 clients, measures 2 s, closes them all, opens one more. Returns
        (cpu seconds in the window, lines logged in the window, new client's reply, seconds
        until that reply)."""
        for _ in range(CLIENTS):
            self.clients.append(connect_and_send(tunnel.port))
        time.sleep(0.5)

        lines_before = len(tunnel.log_lines())
        cpu_before = process_cpu_seconds(tunnel.pid)
        time.sleep(WINDOW)
        window_cpu = process_cpu_seconds(tunnel.pid) - cpu_before
        window_lines = tunnel.log_lines()[lines_before:]

        self._close_clients()
        closed_at = time.monotonic()
        reply = b""
        try:
            with socket.create_connection(("127.0.0.1", tunnel.port), timeout=5.0) as fresh:
                fresh.sendall(b"new")
                fresh.settimeout(2.0)
                reply = fresh.recv(16)
        except (ConnectionResetError, socket.timeout) as error:
            reply = repr(error).encode()
        return window_cpu, window_lines, reply, time.monotonic() - closed_at

    def _check_case(self, tunnel, window_cpu, window_lines, reply, seconds):
        self.assertLess(window_cpu, 0.1, "%.3fs of CPU in %.0fs while out of descriptors"
                        % (window_cpu, WINDOW))
        warnings = [line for line in window_lines if " warn " in line]
        self.assertLessEqual(len(warnings), 3, "\n".join(window_lines))
        for line in warnings:
            self.assertIn("count", log_fields(line), line)
        self.assertEqual(reply, b"new", "the new client, opened as the others closed, got %r"
                         % reply)
        self.assertLess(seconds, 1.0, "the new client was echoed %.2fs after the others "
                        "closed" % seconds)
        self.assertIsNone(tunnel.process.poll(), tunnel.stderr())

    def test_derived_connection_limit_holds_60_clients_without_spinning(self):
        tunnel = self._start()

        outcome = self._run_case(tunnel)

        self._check_case(tunnel, *outcome)
        self.assertLessEqual(process_fd_count(tunnel.pid), FD_LIMIT)

    def test_explicit_limit_above_the_fd_table_holds_60_clients_without_spinning(self):
        tunnel = self._start("--max-connections", "1000")

        outcome = self._run_case(tunnel)

        self._check_case(tunnel, *outcome)

    def test_accept_failing_with_emfile_backs_off_and_recovers(self):
        tunnel = self._start()
        # The connection limit was derived from the limit at start; lowering the soft limit
        # now leaves room for three connections, two descriptors each, and none for the next
        # accept once the third has its upstream socket.
        soft_limit = process_fd_count(tunnel.pid) + 6
        subprocess.run(["prlimit", "--pid", str(tunnel.pid),
                        "--nofile=%d:%d" % (soft_limit, FD_LIMIT)], check=True)

        outcome = self._run_case(tunnel)

        self._check_case(tunnel, *outcome)
        accept_failures = tunnel.log_lines("accept_failed")
        self.assertGreaterEqual(len(accept_failures), 1,
                                "accept never failed: the back-off path was not exercised")
        self.assertIn("Too many open files", accept_failures[0])
        self.assertEqual(tunnel.log_lines("upstream_failed"), [])


if __name__ == "__main__":
    unittest.main()
