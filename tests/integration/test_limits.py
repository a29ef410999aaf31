"""Connection limit, self-connect refusal, counters on SIGUSR1 and at exit, harmless signals.

Every peer is a loopback socket of this process; the tunnel is the built binary.
"""

import signal
import socket
import time
import unittest

from tunnel_harness import (Listener, Tunnel, connect, echo_handler, exchange, free_port,
                            log_fields, process_cpu_seconds, request_stats, run_binary,
                            wait_for_lines)

QUIET = 1.0  # how long a waiting client must see nothing to count as "not served"


def sees_nothing(client, seconds):
    """True when nothing (no data, no end of stream) arrives within `seconds`."""
    client.settimeout(seconds)
    try:
        client.recv(1)
    except socket.timeout:
        return True
    except OSError:
        return False
    return False


def sees_reset(port, timeout=5.0):
    """True when a client connecting to port gets a reset (during connect or at its first
    read) rather than data or a clean end of stream."""
    try:
        with connect(port, timeout=timeout) as client:
            client.recv(1)
    except ConnectionResetError:
        return True
    return False


class ConnectionLimitTest(unittest.TestCase):

    def setUp(self):
        self.upstream = Listener(echo_handler)
        self.addCleanup(self.upstream.close)
        self.clients = []
        self.addCleanup(self._close_clients)

    def _close_clients(self):
        for client in self.clients:
            client.close()

    def _client(self, port, **kwargs):
        client = connect(port, **kwargs)
        self.clients.append(client)
        return client

    def test_fifth_client_waits_at_the_limit_and_is_served_when_one_closes(self):
        tunnel = Tunnel("--listen", "127.0.0.1:0", "--to", "127.0.0.1:%d" % self.upstream.port,
                        "--max-connections", "4")
        self.addCleanup(tunnel.stop)
        held = [self._client(tunnel.port) for _ in range(4)]
        for index, client in enumerate(held):
            self.assertEqual(exchange(client, b"held-%d" % index), b"held-%d" % index)

        fifth = self._client(tunnel.port)
        fifth.sendall(b"fifth")
        fifth_waited = sees_nothing(fifth, QUIET)
        accepted_while_waiting = self.upstream.accepted
        limit_logged = tunnel.wait_for_log(" connection_limit ", timeout=2.0)
        held[0].close()
        started = time.monotonic()
        fifth.settimeout(2.0)
        fifth_reply = fifth.recv(64)
        served_after = time.monotonic() - started

        self.assertTrue(fifth_waited, "the fifth client was answered while 4 were open")
        self.assertEqual(accepted_while_waiting, 4, "the fifth reached the upstream early")
        self.assertTrue(limit_logged, "no connection_limit line while at the limit")
        self.assertEqual(fifth_reply, b"fifth")
        self.assertLess(served_after, 1.0, "the fifth was served %.2fs after a slot freed"
                        % served_after)
        for index, client in enumerate(held[1:], start=1):
            self.assertEqual(exchange(client, b"still-%d" % index), b"still-%d" % index)
        closes = wait_for_lines(tunnel, "close", 1)
        self.assertEqual(len(closes), 1, closes)
        self.assertIn("closed_by=client how=fin", closes[0])
        limit_fields = log_fields(tunnel.log_lines("connection_limit")[0])
        self.assertEqual(limit_fields.get("max_connections"), "4")
        self.assertIn("count", limit_fields)

    def test_connection_limit_line_is_rate_limited_while_clients_wait(self):
        tunnel = Tunnel("--listen", "127.0.0.1:0", "--to", "127.0.0.1:%d" % self.upstream.port,
                        "--max-connections", "1")
        self.addCleanup(tunnel.stop)
        holder = self._client(tunnel.port)
        self.assertEqual(exchange(holder, b"holder"), b"holder")

        waiting = [self._client(tunnel.port) for _ in range(5)]
        time.sleep(2.5)
        lines = tunnel.log_lines("connection_limit")

        self.assertGreaterEqual(len(lines), 1)
        self.assertLessEqual(len(lines), 4, "connection_limit not rate-limited:\n" +
                             "\n".join(lines))
        for client in waiting:
            self.assertTrue(sees_nothing(client, 0.05))
        self.assertEqual(exchange(holder, b"again"), b"again")

    def test_no_connection_limit_line_while_nobody_waits(self):
        tunnel = Tunnel("--listen", "127.0.0.1:0", "--to", "127.0.0.1:%d" % self.upstream.port,
                        "--max-connections", "2")
        self.addCleanup(tunnel.stop)
        for index in range(2):
            client = self._client(tunnel.port)
            self.assertEqual(exchange(client, b"held-%d" % index), b"held-%d" % index)

        time.sleep(1.5)
        lines_at_the_limit = tunnel.log_lines("connection_limit")
        self._client(tunnel.port)
        logged_once_one_waits = tunnel.wait_for_log(" connection_limit ", timeout=2.0)

        self.assertEqual(lines_at_the_limit, [], "a line while no client was waiting")
        self.assertTrue(logged_once_one_waits)
        self.assertEqual(log_fields(tunnel.log_lines("connection_limit")[0])["count"], "1")

    def test_limit_above_what_the_descriptors_allow_is_capped_with_one_line(self):
        tunnel = Tunnel("--listen", "127.0.0.1:0", "--to", "127.0.0.1:%d" % self.upstream.port,
                        "--max-connections", "100000000")
        self.addCleanup(tunnel.stop)

        self.assertTrue(tunnel.wait_for_log(" max_connections_capped ", timeout=2.0))
        line = tunnel.log_lines("max_connections_capped")[0]
        fields = log_fields(line)

        self.assertEqual(fields["requested"], "100000000", line)
        self.assertLess(int(fields["max_connections"]), int(fields["open_files_limit"]), line)

    def test_limit_holds_across_both_loopback_families(self):
        # localhost listens on 127.0.0.1 and ::1: two acceptors share one limit.
        tunnel = Tunnel("--listen", "localhost:0", "--to", "127.0.0.1:%d" % self.upstream.port,
                        "--max-connections", "1")
        self.addCleanup(tunnel.stop)
        first = self._client(tunnel.port)
        self.assertEqual(exchange(first, b"v4"), b"v4")

        second = self._client(tunnel.port, host="::1", family=socket.AF_INET6)
        second.sendall(b"v6")
        second_waited = sees_nothing(second, QUIET)
        first.close()
        second.settimeout(3.0)
        second_reply = second.recv(64)

        self.assertTrue(second_waited, "a client on ::1 was served beyond --max-connections 1 "
                        "(upstream accepted %d)" % self.upstream.accepted)
        self.assertEqual(second_reply, b"v6")

    def test_two_listeners_waiting_at_the_limit_cost_no_cpu(self):
        # localhost: one acceptor for 127.0.0.1 and one for ::1, both waiting for a free slot.
        tunnel = Tunnel("--listen", "localhost:0", "--to", "127.0.0.1:%d" % self.upstream.port,
                        "--max-connections", "1")
        self.addCleanup(tunnel.stop)
        holder = self._client(tunnel.port)
        self.assertEqual(exchange(holder, b"holder"), b"holder")
        self._client(tunnel.port).sendall(b"v4")
        self._client(tunnel.port, host="::1", family=socket.AF_INET6).sendall(b"v6")
        time.sleep(0.3)

        cpu_before = process_cpu_seconds(tunnel.pid)
        time.sleep(1.5)
        cpu = process_cpu_seconds(tunnel.pid) - cpu_before

        self.assertLess(cpu, 0.1, "%.2fs of CPU in 1.5s while two listeners wait" % cpu)

    def test_limit_holds_across_worker_threads(self):
        tunnel = Tunnel("--listen", "127.0.0.1:0", "--to", "127.0.0.1:%d" % self.upstream.port,
                        "--max-connections", "2", "--threads", "2")
        self.addCleanup(tunnel.stop)
        clients = []
        for index in range(12):
            # Paced, so that each worker's accept loop has re-armed before the next client.
            clients.append(self._client(tunnel.port))
            clients[-1].sendall(b"c%02d" % index)
            time.sleep(0.05)

        time.sleep(QUIET)
        served = [client for client in clients if not sees_nothing(client, 0.05)]

        self.assertEqual(len(served), 2, "%d clients served with --max-connections 2 "
                         "--threads 2" % len(served))


class SelfConnectTest(unittest.TestCase):

    def _assert_refused_with_one_line(self, *args):
        result = run_binary(*args)

        lines = result.stderr.splitlines()
        self.assertEqual(result.returncode, 2, result.stderr)
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertTrue(lines[0].startswith("tcptunnel: "), lines[0])
        self.assertNotIn("Forwarding", result.stdout)

    def test_to_equal_to_the_listen_address_exits_2(self):
        port = free_port()

        self._assert_refused_with_one_line("--listen", "127.0.0.1:%d" % port,
                                           "--to", "127.0.0.1:%d" % port)

    def test_to_loopback_while_listening_on_all_ipv4_addresses_exits_2(self):
        port = free_port()

        self._assert_refused_with_one_line("--listen", "0.0.0.0:%d" % port,
                                           "--to", "127.0.0.1:%d" % port)

    def test_to_in_its_ipv4_mapped_ipv6_form_exits_2(self):
        port = free_port()

        self._assert_refused_with_one_line("--listen", "127.0.0.1:%d" % port,
                                           "--to", "[::ffff:127.0.0.1]:%d" % port)

    def test_port_is_free_again_after_the_refusal(self):
        port = free_port()
        run_binary("--listen", "127.0.0.1:%d" % port, "--to", "127.0.0.1:%d" % port)

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", port))


class CountersAndSignalsTest(unittest.TestCase):

    def setUp(self):
        self.upstream = Listener(echo_handler)
        self.addCleanup(self.upstream.close)

    def test_sigusr1_stats_line_counts_connections_and_bytes(self):
        tunnel = Tunnel("--listen", "127.0.0.1:0", "--to", "127.0.0.1:%d" % self.upstream.port,
                        "--log-level", "debug")
        self.addCleanup(tunnel.stop)
        for size in (100, 200, 300):
            with connect(tunnel.port) as client:
                self.assertEqual(exchange(client, b"x" * size), b"x" * size)
                client.shutdown(socket.SHUT_WR)
                self.assertEqual(client.recv(1), b"")
        wait_for_lines(tunnel, "close", 3)
        held = connect(tunnel.port)
        self.addCleanup(held.close)
        wait_for_lines(tunnel, "open", 4)

        stats = request_stats(tunnel)

        expected = {"accepted": "4", "active": "1", "upstream_failures": "0", "refused": "0",
                    "timeout": "0", "unreachable": "0", "dns_nxdomain": "0",
                    "dns_temporary": "0", "other_failures": "0", "from_client": "600",
                    "from_upstream": "600"}
        self.assertEqual({key: stats.get(key) for key in expected}, expected, stats)
        self.assertEqual(exchange(held, b"still"), b"still")

    def test_sigusr1_stats_line_counts_refused_upstream_attempts(self):
        dead_port = free_port()
        tunnel = Tunnel("--listen", "127.0.0.1:0", "--to", "127.0.0.1:%d" % dead_port)
        self.addCleanup(tunnel.stop)
        for _ in range(3):
            self.assertTrue(sees_reset(tunnel.port))

        stats = request_stats(tunnel)

        expected = {"accepted": "3", "active": "0", "upstream_failures": "3", "refused": "3",
                    "timeout": "0", "unreachable": "0", "dns_nxdomain": "0",
                    "dns_temporary": "0", "other_failures": "0", "from_client": "0",
                    "from_upstream": "0"}
        self.assertEqual({key: stats.get(key) for key in expected}, expected, stats)

    def test_sigpipe_and_repeated_sigusr1_do_not_stop_the_tunnel(self):
        tunnel = Tunnel("--listen", "127.0.0.1:0", "--to", "127.0.0.1:%d" % self.upstream.port)
        self.addCleanup(tunnel.stop)
        held = connect(tunnel.port)
        self.addCleanup(held.close)
        self.assertEqual(exchange(held, b"before"), b"before")

        for _ in range(3):
            tunnel.signal(signal.SIGPIPE)
            tunnel.signal(signal.SIGUSR1)
            time.sleep(0.1)
        time.sleep(0.3)

        self.assertIsNone(tunnel.process.poll(), tunnel.stderr())
        self.assertEqual(exchange(held, b"after"), b"after")
        with connect(tunnel.port) as fresh:
            self.assertEqual(exchange(fresh, b"fresh"), b"fresh")
        signal_lines = [line for line in tunnel.log_lines("stats") if "when=signal" in line]
        self.assertEqual(len(signal_lines), 3, signal_lines)
        held.close()
        status, stderr = tunnel.stop()
        self.assertEqual(status, 0, stderr)

    def test_exit_stats_count_everything_once_all_connections_are_closed(self):
        tunnel = Tunnel("--listen", "127.0.0.1:0", "--to", "127.0.0.1:%d" % self.upstream.port,
                        "--drain-timeout", "300ms")
        self.addCleanup(tunnel.stop)
        done = connect(tunnel.port)
        self.assertEqual(exchange(done, b"a" * 10), b"a" * 10)
        done.close()
        wait_for_lines(tunnel, "close", 1)
        held = [connect(tunnel.port) for _ in range(2)]
        for client in held:
            self.addCleanup(client.close)
            self.assertEqual(exchange(client, b"b" * 20), b"b" * 20)

        status, stderr = tunnel.stop()

        exit_lines = [line for line in stderr.splitlines()
                      if " stats " in line and "when=exit" in line]
        self.assertEqual(status, 0, stderr)
        self.assertEqual(len(exit_lines), 1, stderr)
        stats = log_fields(exit_lines[0])
        expected = {"accepted": "3", "active": "0", "from_client": "50",
                    "from_upstream": "50"}
        self.assertEqual({key: stats.get(key) for key in expected}, expected,
                         "held connections ended by the drain deadline are missing from the "
                         "exit counters: " + exit_lines[0])


if __name__ == "__main__":
    unittest.main()
