"""The command line and the process: the old positional form, usage errors, --help, --version,
TCPTUNNEL_* variables, proxy variables, and shutdown on SIGTERM and SIGINT.

Every peer is a loopback socket of this process; the tunnel is the built binary.
"""

import os
import re
import signal
import socket
import subprocess
import time
import unittest

from tunnel_harness import (BINARY, Listener, Tunnel, connect, echo_handler, exchange, free_port,
                            log_fields, run_binary, wait_for_lines)

LEGACY_USAGE = ("(usage: tcptunnel LOCAL_PORT REMOTE_HOST REMOTE_PORT [BIND_HOST], "
                "or tcptunnel --help)")
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                   "all_proxy")


def refuses(port, host="127.0.0.1"):
    try:
        with connect(port, host, timeout=1.0):
            return False
    except ConnectionRefusedError:
        return True


def free_port_on_both_loopbacks():
    """A port free on 127.0.0.1 and ::1 a moment ago."""
    for _ in range(20):
        port = free_port()
        try:
            with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
                probe.bind(("::1", port))
            return port
        except OSError:
            continue
    raise AssertionError("no port free on both loopback addresses")


class PositionalFormTest(unittest.TestCase):

    def setUp(self):
        self.upstream = Listener(echo_handler)
        self.addCleanup(self.upstream.close)

    def test_without_bind_host_prints_the_ready_line_and_serves_both_loopbacks(self):
        port = free_port_on_both_loopbacks()
        tunnel = Tunnel(port, "127.0.0.1", self.upstream.port)
        self.addCleanup(tunnel.stop)

        with connect(port, "127.0.0.1") as ipv4, connect(port, "::1") as ipv6:
            replies = (exchange(ipv4, b"over ipv4"), exchange(ipv6, b"over ipv6"))

        expected = "Forwarding localhost:%d \u2192 127.0.0.1:%d" % (port, self.upstream.port)
        self.assertEqual(tunnel.ready_lines, [expected])
        self.assertEqual(replies, (b"over ipv4", b"over ipv6"))

    def test_with_bind_host_listens_on_that_address_only(self):
        port = free_port_on_both_loopbacks()
        tunnel = Tunnel(port, "localhost", self.upstream.port, "127.0.0.1")
        self.addCleanup(tunnel.stop)

        with connect(port, "127.0.0.1") as ipv4:
            reply = exchange(ipv4, b"bound")

        expected = "Forwarding 127.0.0.1:%d \u2192 localhost:%d" % (port, self.upstream.port)
        self.assertEqual(tunnel.ready_lines, [expected])
        self.assertEqual(reply, b"bound")
        self.assertTrue(refuses(port, "::1"), "::1 was served although BIND_HOST is 127.0.0.1")


class UsageErrorTest(unittest.TestCase):

    def assert_usage_error(self, args, expected=None, env=None):
        # A value wrongly accepted would start a tunnel: on a port of its own, ended by timeout.
        result = run_binary("--listen", "127.0.0.1:0", *args, env=env, timeout=3) \
            if args and args[0].startswith("--") else run_binary(*args, env=env, timeout=3)
        lines = result.stderr.splitlines()
        self.assertEqual(result.returncode, 2, (args, result.stderr))
        self.assertEqual(len(lines), 1, (args, result.stderr))
        self.assertTrue(lines[0].startswith("tcptunnel: "), lines)
        self.assertEqual(result.stdout, "", args)
        if expected is not None:
            self.assertEqual(lines[0], "tcptunnel: " + expected)
        return lines[0]

    def test_positional_form_mistakes_exit_2_with_the_exact_line(self):
        cases = [
            (["0", "h", "1"], 'LOCAL_PORT "0": port out of range 1-65535 ' + LEGACY_USAGE),
            (["70000", "h", "1"], 'LOCAL_PORT "70000": port out of range 1-65535 ' + LEGACY_USAGE),
            (["abc", "h", "1"], 'LOCAL_PORT "abc": port is not a number ' + LEGACY_USAGE),
            (["1", "", "1"], 'REMOTE_HOST "" REMOTE_PORT "1": empty host ' + LEGACY_USAGE),
            (["1", "h"], "expected 3 or 4 arguments, got 2 " + LEGACY_USAGE),
            (["1", "h", "1", "a", "b"], "expected 3 or 4 arguments, got 5 " + LEGACY_USAGE),
            (["1", "h", "1", "--threads", "2"], 'option "--threads" after a positional argument '
             "(options go with --listen and --to instead of the positional form; see tcptunnel "
             "--help)"),
        ]
        for args, expected in cases:
            with self.subTest(args=args):
                self.assert_usage_error(args, expected)

    def test_option_mistakes_exit_2_with_the_exact_line(self):
        cases = [
            (["--listen", "8443:x"],
             '--listen "8443:x": port is not a number (expected HOST:PORT, [IPV6]:PORT or PORT)'),
            (["--listen", "127.0.0.1:70000"], '--listen "127.0.0.1:70000": port out of range '
             "0-65535 (expected HOST:PORT, [IPV6]:PORT or PORT)"),
            (["--to", ":443"], '--to ":443": empty host (expected HOST:PORT or [IPV6]:PORT)'),
            (["--to", "127.0.0.1:0"],
             '--to "127.0.0.1:0": port out of range 1-65535 (expected HOST:PORT or [IPV6]:PORT)'),
            (["--bogus"], "unknown option --bogus (see tcptunnel --help)"),
            (["--to", "127.0.0.1:1", "--to", "127.0.0.1:2"],
             "--to: given more than once (expected it once) (see tcptunnel --help)"),
            (["--threads", "x"], '--threads: "x" is not a decimal whole number (expected e.g. '
             "100) (see tcptunnel --help)"),
            (["--listen", "127.0.0.1:5099", "--listen", "127.0.0.1:5099"],
             '--listen "127.0.0.1:5099": listed twice (expected each address once)'),
            (["--connect-timeout", "5x"], '--connect-timeout "5x": duration needs a unit: ms, s, '
             "m or h (expected a duration such as 500ms, 10s or 2m)"),
            (["--connect-timeout", "0"],
             "--connect-timeout must be more than 0 (expected e.g. 10s)"),
            (["--threads", "0"], "--threads: Value 0 not in range 1 to 64 (see tcptunnel --help)"),
            (["--to", "a\nb"], '--to "a\\x0ab": missing port (expected HOST:PORT or [IPV6]:PORT)'),
            # strtoull would read "-1" as the largest count and "010" as octal 8.
            (["--max-connections", "-1"], '--max-connections: "-1" is not a decimal whole number '
             "(expected e.g. 100) (see tcptunnel --help)"),
            (["--max-connections", "010"], '--max-connections: "010" is not a decimal whole '
             "number (expected e.g. 100) (see tcptunnel --help)"),
            (["--max-connections", "99999999999999999999"], '--max-connections: '
             '"99999999999999999999" is too large (expected at most 999999999) '
             "(see tcptunnel --help)"),
            (["--to", "http://127.0.0.1:80"], '--to "http://127.0.0.1:80": only the tcp:// '
             "scheme is accepted (expected HOST:PORT or [IPV6]:PORT)"),
        ]
        for args, expected in cases:
            with self.subTest(args=args):
                self.assert_usage_error(args, expected)

    def test_other_bad_values_exit_2_with_one_line_naming_the_option(self):
        cases = [(["--drain-timeout", "-1s"], "--drain-timeout"),
                 (["--idle-timeout", "forever"], "--idle-timeout"),
                 (["--half-close-timeout", "10"], "--half-close-timeout"),
                 (["--max-connections", "abc"], "--max-connections"),
                 (["--threads", "0x2"], "--threads"),
                 (["--threads", "65"], "--threads"),
                 (["--splice", "sometimes"], "--splice"),
                 (["--log-level", "loud"], "--log-level"),
                 (["--log-format", "xml"], "--log-format"),
                 (["--to"], "--to"),
                 (["--listen", ""], "--listen"),
                 (["--listen", "127.0.0.1:0", "stray"], "stray")]
        for args, option in cases:
            with self.subTest(args=args):
                self.assertIn(option, self.assert_usage_error(args))

    def test_bad_value_in_a_tcptunnel_variable_is_a_usage_error_naming_the_variable(self):
        cases = [({"TCPTUNNEL_CONNECT_TIMEOUT": "soon"}, 'TCPTUNNEL_CONNECT_TIMEOUT "soon": '),
                 ({"TCPTUNNEL_CONNECT_TIMEOUT": "0"}, "TCPTUNNEL_CONNECT_TIMEOUT must be "),
                 ({"TCPTUNNEL_MAX_CONNECTIONS": "-1"}, "TCPTUNNEL_MAX_CONNECTIONS: "),
                 ({"TCPTUNNEL_ALLOW_FROM": "10.0.0.0/33"}, 'TCPTUNNEL_ALLOW_FROM "10.0.0.0/33": '),
                 ({"TCPTUNNEL_SPLICE": "sometimes"}, "TCPTUNNEL_SPLICE: ")]
        for env, start in cases:
            with self.subTest(env=env):
                line = self.assert_usage_error(["--to", "127.0.0.1:1"], env=env)
                self.assertTrue(line.startswith("tcptunnel: " + start), line)

        # The command line wins over the variable, and its option is the one named.
        line = self.assert_usage_error(["--to", "127.0.0.1:1", "--connect-timeout=soon"],
                                       env={"TCPTUNNEL_CONNECT_TIMEOUT": "later"})
        self.assertTrue(line.startswith('tcptunnel: --connect-timeout "soon": '), line)


class ProcessTest(unittest.TestCase):

    def test_listen_address_in_use_exits_1_with_one_line(self):
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            port = holder.getsockname()[1]
            results = [run_binary("--listen", "127.0.0.1:%d" % port, "--to", "127.0.0.1:1"),
                       run_binary(port, "127.0.0.1", "1", "127.0.0.1")]

        for result in results:
            lines = result.stderr.splitlines()
            self.assertEqual(result.returncode, 1, result.stderr)
            self.assertEqual(len(lines), 1, result.stderr)
            self.assertIn("listen_failed", lines[0])
            fields = log_fields(lines[0])
            self.assertEqual(fields["address"], "127.0.0.1:%d" % port)
            self.assertEqual(fields["error"], "Address already in use")
            self.assertEqual(result.stdout, "")

    def test_second_multi_thread_tunnel_on_the_same_port_exits_1(self):
        # Each thread's listener has SO_REUSEPORT; a second tunnel must not join their group
        # and take a share of the clients.
        upstream = Listener(echo_handler)
        self.addCleanup(upstream.close)
        first = Tunnel("--listen", "127.0.0.1:0", "--to", "127.0.0.1:%d" % upstream.port,
                       "--threads", "2")
        self.addCleanup(first.stop)

        second = run_binary("--listen", "127.0.0.1:%d" % first.port, "--to", "127.0.0.1:1",
                            "--threads", "2")
        echoes = []
        for index in range(20):
            with connect(first.port) as client:
                echoes.append(exchange(client, b"client %d" % index))

        self.assertEqual(second.returncode, 1, second.stderr)
        self.assertEqual(len(second.stderr.splitlines()), 1, second.stderr)
        self.assertIn("listen_failed", second.stderr)
        self.assertEqual(echoes, [b"client %d" % index for index in range(20)])

    def test_started_with_stdout_and_stderr_closed_logs_nowhere_and_still_relays(self):
        upstream = Listener(echo_handler)
        self.addCleanup(upstream.close)
        port = free_port()
        process = subprocess.Popen(
            ["sh", "-c", 'exec "$@" >&- 2>&-', "sh", BINARY, "--listen", "127.0.0.1:%d" % port,
             "--to", "127.0.0.1:%d" % upstream.port], stdin=subprocess.DEVNULL)
        self.addCleanup(process.wait)
        self.addCleanup(process.terminate)
        client = None
        deadline = time.monotonic() + 5.0
        while client is None and time.monotonic() < deadline:
            try:
                client = connect(port)
            except ConnectionRefusedError:
                time.sleep(0.05)
        self.assertIsNotNone(client, "the tunnel never listened")
        self.addCleanup(client.close)

        reply = exchange(client, b"hello")
        targets = [os.readlink("/proc/%d/fd/%d" % (process.pid, fd)) for fd in (1, 2)]

        self.assertEqual(reply, b"hello")
        # Not the event loop's own descriptors, which would then receive the log lines.
        self.assertEqual(targets, ["/dev/null", "/dev/null"])

    def test_help_lists_every_option_with_its_default(self):
        result = run_binary("--help")

        self.assertEqual((result.returncode, result.stderr), (0, ""))
        defaults = {"--listen": "localhost:18443", "--to": "host.docker.internal:18443",
                    "--connect-timeout": "10s", "--drain-timeout": "1500ms",
                    "--idle-timeout": "0", "--half-close-timeout": "0",
                    "--max-connections": "0", "--threads": "1", "--splice": "auto",
                    "--log-level": "info", "--log-format": "text"}
        for option, default in defaults.items():
            listed = r"\n\s+%s [^\n]*=%s[ \n]" % (option, re.escape(default))
            self.assertRegex(result.stdout, listed)
            self.assertIn("TCPTUNNEL_%s" % option[2:].upper().replace("-", "_"), result.stdout)
        self.assertIn("--version", result.stdout)
        self.assertIn("LOCAL_PORT REMOTE_HOST REMOTE_PORT [BIND_HOST]", result.stdout)

    def test_version_names_the_asio_and_openssl_versions(self):
        result = run_binary("--version")

        self.assertEqual((result.returncode, result.stderr), (0, ""))
        self.assertRegex(result.stdout, r"^tcptunnel \d+\.\d+\.\d+\S* \(asio 1\.\d+\.\d+, "
                                        r"OpenSSL 3\.\d+\.\d+[^\n]*\)\n$")


class EnvironmentTest(unittest.TestCase):

    def setUp(self):
        self.upstream = Listener(echo_handler)
        self.addCleanup(self.upstream.close)

    def test_tcptunnel_variables_are_honoured_and_a_flag_wins(self):
        env = {"TCPTUNNEL_LISTEN": "127.0.0.1:0",
               "TCPTUNNEL_TO": "127.0.0.1:%d" % free_port(),
               "TCPTUNNEL_CONNECT_TIMEOUT": "soon",
               "TCPTUNNEL_LOG_FORMAT": "json"}
        tunnel = Tunnel("--to", "127.0.0.1:%d" % self.upstream.port,
                        "--connect-timeout", "2s", env=env)
        self.addCleanup(tunnel.stop)

        with connect(tunnel.port) as client:
            reply = exchange(client, b"via env")
        closes = wait_for_lines(tunnel, "close", 1)

        self.assertEqual(reply, b"via env")
        self.assertRegex(tunnel.ready_lines[-1], r"^Forwarding 127\.0\.0\.1:\d+ \u2192 ")
        self.assertEqual(len(closes), 1)
        self.assertTrue(closes[0].startswith("{"), closes[0])

    def test_tcptunnel_to_alone_picks_the_upstream(self):
        tunnel = Tunnel("--listen", "127.0.0.1:0",
                        env={"TCPTUNNEL_TO": "127.0.0.1:%d" % self.upstream.port})
        self.addCleanup(tunnel.stop)

        with connect(tunnel.port) as client:
            self.assertEqual(exchange(client, b"to from env"), b"to from env")
        self.assertTrue(tunnel.ready_lines[-1].endswith(
            "\u2192 127.0.0.1:%d" % self.upstream.port), tunnel.ready_lines)

    def test_proxy_variables_are_ignored(self):
        proxy = Listener(echo_handler)
        self.addCleanup(proxy.close)
        proxy_url = "http://127.0.0.1:%d" % proxy.port
        env = {name: proxy_url for name in PROXY_VARIABLES}
        env.update({"no_proxy": "", "NO_PROXY": ""})
        tunnel = Tunnel("--listen", "127.0.0.1:0", "--to", "127.0.0.1:%d" % self.upstream.port,
                        env=env)
        self.addCleanup(tunnel.stop)

        with connect(tunnel.port) as client:
            reply = exchange(client, b"direct")

        self.assertEqual(reply, b"direct")
        self.assertEqual((self.upstream.accepted, proxy.accepted), (1, 0))


class ShutdownTest(unittest.TestCase):

    def setUp(self):
        self.upstream = Listener(echo_handler)
        self.addCleanup(self.upstream.close)

    def _start(self, drain):
        tunnel = Tunnel("--listen", "127.0.0.1:0", "--to", "127.0.0.1:%d" % self.upstream.port,
                        "--drain-timeout", drain)
        self.addCleanup(tunnel.stop)
        client = connect(tunnel.port)
        self.addCleanup(client.close)
        self.assertEqual(exchange(client, b"before"), b"before")
        return tunnel, client

    def test_signal_stops_accepting_at_once_while_the_open_connection_flows_to_its_end(self):
        for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with self.subTest(signal=number.name):
                tunnel, client = self._start("5s")

                tunnel.signal(number)
                self.assertTrue(tunnel.wait_for_log(" draining ", 2.0))
                refused = refuses(tunnel.port)
                echoes = [exchange(client, b"during %d" % index) for index in range(5)]
                still_running = tunnel.process.poll() is None
                client.shutdown(socket.SHUT_WR)
                client.settimeout(5.0)
                end = client.recv(64)
                closed_at = time.monotonic()
                status = tunnel.process.wait(5)
                exited_after = time.monotonic() - closed_at

                self.assertTrue(refused, "a new client was accepted after %s" % number.name)
                self.assertEqual(echoes, [b"during %d" % index for index in range(5)])
                self.assertTrue(still_running)
                self.assertEqual((end, status), (b"", 0))
                self.assertLess(exited_after, 1.0)
                _, stderr = tunnel.stop()
                self.assertIn("signal=%s" % number.name, stderr)
                self.assertIn("closed_by=client how=fin", stderr)

    def test_connection_left_open_is_reset_at_the_drain_timeout_and_the_exit_is_clean(self):
        # A reset on both sides: a stream cut short must not look complete to either peer.
        for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with self.subTest(signal=number.name):
                tunnel, client = self._start("1s")
                upstream_errors = len(self.upstream.errors)

                signalled_at = time.monotonic()
                tunnel.signal(number)
                status = tunnel.process.wait(5)
                exited_after = time.monotonic() - signalled_at
                client.settimeout(2.0)
                try:
                    ended = "fin" if client.recv(64) == b"" else "data"
                except ConnectionResetError:
                    ended = "rst"

                self.assertEqual(status, 0)
                self.assertGreaterEqual(exited_after, 0.9)
                self.assertLess(exited_after, 2.0)
                self.assertEqual(ended, "rst")
                deadline = time.monotonic() + 2.0
                while len(self.upstream.errors) == upstream_errors and time.monotonic() < deadline:
                    time.sleep(0.02)
                self.assertEqual([type(error) for error in self.upstream.errors[upstream_errors:]],
                                 [ConnectionResetError])
                _, stderr = tunnel.stop()
                closes = [line for line in stderr.splitlines() if " close " in line]
                self.assertEqual(len(closes), 1, stderr)
                self.assertEqual(log_fields(closes[0])["how"], "shutdown", closes[0])

    def test_second_signal_ends_the_drain_at_once(self):
        tunnel, _ = self._start("10s")

        tunnel.signal(signal.SIGTERM)
        self.assertTrue(tunnel.wait_for_log(" draining ", 2.0))
        signalled_at = time.monotonic()
        tunnel.signal(signal.SIGTERM)
        status = tunnel.process.wait(5)

        self.assertEqual(status, 0)
        self.assertLess(time.monotonic() - signalled_at, 1.0)


if __name__ == "__main__":
    unittest.main()
