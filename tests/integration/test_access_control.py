"""Relay access control with real clients: --allow-from, --require-tls, --sni, --hello-timeout.

The upstream is `openssl s_server -WWW` (the test CA's certificate for localhost, 127.0.0.1 and
::1) behind a small Python forwarder that counts the connections it accepts, so a refused client
is shown never to reach the upstream. Clients trust only the test CA and get an environment with
no proxy variables.
"""

import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import unittest

import certs
from tls_peers import (CLIENT_TIMEOUT, TlsServer, capture_client_hello, expect_reset, forward_to,
                       send_expecting_reset)
from tunnel_harness import Listener, Tunnel, log_fields, process_cpu_seconds, wait_for_lines

RATE_LIMIT = {"rate": {"limit": 5000, "remaining": 4999, "reset": 1767225600}}
INDEX_HTML = b"<!doctype html><title>fake DIFC proxy</title><p>behind an access list</p>\n"
GUARDED = ("--require-tls", "--sni", "localhost", "--threads", "1")


def ipv6_loopback_usable():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


class AccessControlTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="tcptunnel-access-")
        cls.pki = certs.make_pki(cls.tmp)
        docroot = os.path.join(cls.tmp, "www")
        os.makedirs(os.path.join(docroot, "api", "v3"))
        with open(os.path.join(docroot, "api", "v3", "rate_limit"), "w") as out:
            json.dump(RATE_LIMIT, out)
        with open(os.path.join(docroot, "index.html"), "wb") as out:
            out.write(INDEX_HTML)
        cls.server = TlsServer(docroot, cls.pki.server_cert, cls.pki.server_key)
        cls.hello = capture_client_hello()

    @classmethod
    def tearDownClass(cls):
        cls.server.close()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        # A fresh counting forwarder for each test: `accepted` is what reached the upstream.
        self.upstream = Listener(forward_to(self.server.port))
        self.addCleanup(self.upstream.close)
        self.home = tempfile.mkdtemp(dir=self.tmp, prefix="home-")

    def start_tunnel(self, *flags, listen="127.0.0.1:0"):
        tunnel = Tunnel("--listen", listen, "--to", "127.0.0.1:%d" % self.upstream.port, *flags)
        self.addCleanup(tunnel.stop)
        return tunnel

    def client_env(self, **extra):
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": self.home,
               "LANG": "C.UTF-8"}
        env.update(extra)
        return env

    def curl(self, url, port, address="127.0.0.1"):
        return subprocess.run(
            ["curl", "--silent", "--show-error", "--fail", "--max-time", str(CLIENT_TIMEOUT),
             "--noproxy", "*", "--cacert", self.pki.ca_cert,
             "--resolve", "localhost:%d:%s" % (port, address), url],
            capture_output=True, env=self.client_env(), timeout=CLIENT_TIMEOUT + 5)

    def gh_api_rate_limit(self, port):
        env = self.client_env(
            GH_HOST="localhost:%d" % port, GH_ENTERPRISE_TOKEN="x",
            SSL_CERT_FILE=self.pki.ca_cert, GH_CONFIG_DIR=os.path.join(self.home, "gh"),
            XDG_CONFIG_HOME=os.path.join(self.home, ".config"),
            XDG_CACHE_HOME=os.path.join(self.home, ".cache"),
            GH_NO_UPDATE_NOTIFIER="1", GH_PROMPT_DISABLED="1", NO_COLOR="1")
        return subprocess.run(["gh", "api", "rate_limit"], capture_output=True, text=True,
                              env=env, timeout=CLIENT_TIMEOUT + 5)

    def s_client(self, port, *flags):
        return subprocess.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % port, *flags],
                              stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=CLIENT_TIMEOUT)

    def refusal(self, tunnel, count=1, timeout=6.0):
        """The fields of the tunnel's count-th client_refused line."""
        lines = wait_for_lines(tunnel, "client_refused", count, timeout)
        self.assertGreaterEqual(len(lines), count, tunnel.stderr())
        return log_fields(lines[count - 1])

    def assert_https_served(self, port, address="127.0.0.1"):
        result = self.curl("https://localhost:%d/index.html" % port, port, address)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, INDEX_HTML)

    # --- clients that are let through ------------------------------------------------------

    def test_gh_and_curl_with_sni_localhost_are_relayed(self):
        tunnel = self.start_tunnel("--allow-from", "127.0.0.1/32", *GUARDED)

        gh = self.gh_api_rate_limit(tunnel.port)
        self.assert_https_served(tunnel.port)

        self.assertEqual(gh.returncode, 0, gh.stderr)
        self.assertEqual(json.loads(gh.stdout), RATE_LIMIT)
        self.assertGreaterEqual(self.upstream.accepted, 2)
        self.assertEqual(tunnel.log_lines("client_refused"), [])

    def test_full_tls_exchange_with_splice_always_and_never(self):
        for mode in ("always", "never"):
            with self.subTest(splice=mode):
                tunnel = self.start_tunnel("--allow-from", "127.0.0.1/32", *GUARDED,
                                           "--splice", mode)
                self.assert_https_served(tunnel.port)
                gh = self.gh_api_rate_limit(tunnel.port)
                self.assertEqual(gh.returncode, 0, gh.stderr)
                self.assertEqual(json.loads(gh.stdout), RATE_LIMIT)

    # --- refused by source address ---------------------------------------------------------

    def test_client_from_a_disallowed_loopback_address_is_reset_before_the_upstream(self):
        tunnel = self.start_tunnel("--allow-from", "127.0.0.1/32", *GUARDED)

        reset = send_expecting_reset(tunnel.port, self.hello, source="127.0.0.2")
        fields = self.refusal(tunnel)

        self.assertTrue(reset)
        self.assertEqual(fields["reason"], "not-allowed")
        self.assertTrue(fields["client"].startswith("127.0.0.2:"), fields)
        self.assertEqual(self.upstream.accepted, 0)

    def test_ipv4_mapped_network_admits_the_ipv4_client_it_names(self):
        tunnel = self.start_tunnel("--allow-from", "::ffff:127.0.0.1/128", *GUARDED)

        self.assert_https_served(tunnel.port)
        reset = send_expecting_reset(tunnel.port, self.hello, source="127.0.0.2")

        self.assertTrue(reset)
        self.assertEqual(self.refusal(tunnel)["reason"], "not-allowed")
        self.assertEqual(self.upstream.accepted, 1)

    @unittest.skipUnless(ipv6_loopback_usable(), "no IPv6 loopback")
    def test_ipv6_client_is_matched_against_ipv6_networks(self):
        allowed = self.start_tunnel("--allow-from", "::1/128", *GUARDED, listen="[::1]:0")
        v4_only = self.start_tunnel("--allow-from", "127.0.0.0/8", *GUARDED, listen="[::1]:0")

        self.assert_https_served(allowed.port, "::1")
        reset = send_expecting_reset(v4_only.port, self.hello, host="::1")
        fields = self.refusal(v4_only)

        self.assertTrue(reset)
        self.assertEqual(fields["reason"], "not-allowed")
        self.assertTrue(fields["client"].startswith("[::1]:"), fields)
        self.assertEqual(self.upstream.accepted, 1)

    @unittest.skipUnless(ipv6_loopback_usable(), "no IPv6 loopback")
    def test_ipv6_wildcard_listener_takes_no_ipv4_clients(self):
        # [::] is bound IPv6-only, so an IPv4 client never shows up as ::ffff:a.b.c.d there.
        tunnel = self.start_tunnel("--allow-from", "::1/128", *GUARDED, listen="[::]:0")

        with socket.socket() as client:
            client.settimeout(5)
            outcome = client.connect_ex(("127.0.0.1", tunnel.port))

        self.assertNotEqual(outcome, 0)
        self.assert_https_served(tunnel.port, "::1")

    # --- refused by the first bytes --------------------------------------------------------

    def test_non_tls_and_wrong_name_clients_never_reach_the_upstream(self):
        # One tunnel per client: refusals are logged at most once a second for each reason.
        def plain_http(port):
            result = self.curl("http://localhost:%d/" % port, port)
            return result.returncode != 0

        def ssh_banner(port):
            return send_expecting_reset(port, b"SSH-2.0-OpenSSH_9.0\r\n")

        def s_client(*flags):
            return lambda port: self.s_client(port, *flags).returncode != 0

        cases = [("plain HTTP", plain_http, "not-tls", "not a TLS handshake record"),
                 ("SSH banner", ssh_banner, "not-tls", "not a TLS handshake record"),
                 ("wrong SNI", s_client("-servername", "evil.example"), "sni-not-allowed",
                  "server name evil.example"),
                 ("no SNI", s_client("-noservername"), "no-sni", "without a server name")]
        for name, client, reason, detail in cases:
            with self.subTest(client=name):
                tunnel = self.start_tunnel("--allow-from", "127.0.0.1/32", *GUARDED)

                failed = client(tunnel.port)
                fields = self.refusal(tunnel)

                self.assertTrue(failed)
                self.assertEqual(fields["reason"], reason)
                self.assertIn(detail, fields["detail"])
                self.assertEqual(self.upstream.accepted, 0)

    def test_truncated_and_oversized_records_are_refused(self):
        hello = self.hello
        # The record length cuts the ClientHello short: the rest would need a second record.
        cut_length = len(hello) - 5 - 10
        cut_record = hello[:3] + cut_length.to_bytes(2, "big") + hello[5:5 + cut_length]
        cases = [("half a hello, then FIN", hello[:len(hello) // 2], True, "closed"),
                 ("record cuts the hello", cut_record, False, "too-large"),
                 ("record over 16384 bytes", b"\x16\x03\x01\x40\x01" + b"\x01" * 64, False,
                  "too-large")]
        for name, payload, half_close, reason in cases:
            with self.subTest(client=name):
                tunnel = self.start_tunnel("--allow-from", "127.0.0.1/32", *GUARDED,
                                           "--hello-timeout", "3s")

                started = time.monotonic()
                reset = send_expecting_reset(tunnel.port, payload, half_close=half_close)
                elapsed = time.monotonic() - started
                fields = self.refusal(tunnel)

                self.assertTrue(reset)
                self.assertEqual(fields["reason"], reason)
                # Refused when the bytes (or the FIN) show it, not at the hello deadline.
                self.assertLess(elapsed, 1.5)
                self.assertEqual(self.upstream.accepted, 0)

    # --- slow clients ----------------------------------------------------------------------

    def dribble(self, client, payload, outcome):
        """Sends payload one byte per 100 ms; records when a send fails (the tunnel's reset)."""
        try:
            for index in range(len(payload)):
                client.sendall(payload[index:index + 1])
                time.sleep(0.1)
            outcome["finished"] = time.monotonic()
        except OSError:
            outcome["reset"] = time.monotonic()

    def test_slow_hello_is_refused_at_the_deadline_without_holding_the_thread(self):
        tunnel = self.start_tunnel("--allow-from", "127.0.0.1/32", *GUARDED,
                                   "--hello-timeout", "3s")
        self.assertGreater(len(self.hello), 200)  # at 100 ms a byte: well past the deadline
        cpu_before = process_cpu_seconds(tunnel.pid)
        outcome = {}

        with socket.create_connection(("127.0.0.1", tunnel.port), timeout=5) as slow:
            started = time.monotonic()
            dribbler = threading.Thread(target=self.dribble,
                                        args=(slow, self.hello, outcome), daemon=True)
            dribbler.start()
            time.sleep(0.5)
            served_started = time.monotonic()
            self.assert_https_served(tunnel.port)  # the one worker thread is free meanwhile
            served_in = time.monotonic() - served_started
            fields = self.refusal(tunnel, timeout=8)
            refused_after = time.monotonic() - started
            dribbler.join(2)  # its next byte meets the reset
            reset = "reset" in outcome or expect_reset(slow)
        cpu_used = process_cpu_seconds(tunnel.pid) - cpu_before

        self.assertEqual(fields["reason"], "hello-timeout")
        self.assertTrue(reset)
        self.assertGreater(refused_after, 2.8)
        self.assertLess(refused_after, 4.5)
        self.assertLess(served_in, 2.0)
        # Waiting for bytes is not polling for them: the wait costs next to no CPU.
        self.assertLess(cpu_used, 0.5)
        self.assertEqual(self.upstream.accepted, 1)  # only the normal client

    def tls_get_with_dribbled_hello(self, port, outcome):
        """GET /index.html over TLS (Python's ssl on memory buffers, so this test decides how
        the ClientHello goes out): the hello's last 15 bytes one per 100 ms, the rest at once."""
        context = ssl.create_default_context(cafile=self.pki.ca_cert)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            try:
                tls.do_handshake()
            except ssl.SSLWantReadError:
                pass
            hello = outgoing.read()
            client.sendall(hello[:-15])
            self.dribble(client, hello[-15:], outcome)

            def exchange(step):
                deadline = time.monotonic() + CLIENT_TIMEOUT
                while time.monotonic() < deadline:
                    try:
                        result = step()
                        client.sendall(outgoing.read())
                        return result
                    except ssl.SSLWantReadError:
                        client.sendall(outgoing.read())
                        data = client.recv(65536)
                        if not data:
                            incoming.write_eof()
                        incoming.write(data)
                raise AssertionError("TLS exchange stalled")

            exchange(tls.do_handshake)
            exchange(lambda: tls.write(b"GET /index.html HTTP/1.0\r\n\r\n"))
            answer = b""
            while True:
                try:
                    chunk = exchange(lambda: tls.read(65536))
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    break
                if not chunk:
                    break
                answer += chunk
            return answer

    def test_hello_completed_byte_by_byte_within_the_deadline_is_relayed(self):
        tunnel = self.start_tunnel("--allow-from", "127.0.0.1/32", *GUARDED,
                                   "--hello-timeout", "3s")
        cpu_before = process_cpu_seconds(tunnel.pid)
        outcome = {}

        answer = self.tls_get_with_dribbled_hello(tunnel.port, outcome)
        cpu_used = process_cpu_seconds(tunnel.pid) - cpu_before

        self.assertIn("finished", outcome)
        # The whole exchange went through: the client's later, shorter records too.
        self.assertTrue(answer.endswith(INDEX_HTML), answer)
        self.assertEqual(self.upstream.accepted, 1)
        self.assertEqual(tunnel.log_lines("client_refused"), [])
        self.assertLess(cpu_used, 0.5)

    # --- the open relay warning ------------------------------------------------------------

    def test_open_relay_warning_only_without_allow_from(self):
        open_tunnel = self.start_tunnel(listen="0.0.0.0:0")
        guarded = self.start_tunnel("--allow-from", "127.0.0.1/32", listen="0.0.0.0:0")

        _, open_stderr = open_tunnel.stop()
        _, guarded_stderr = guarded.stop()

        warnings = [line for line in open_stderr.splitlines() if " open_relay " in line]
        self.assertEqual(len(warnings), 1, open_stderr)
        self.assertIn("--allow-from", warnings[0])
        self.assertNotIn("open_relay", guarded_stderr)


if __name__ == "__main__":
    unittest.main()
