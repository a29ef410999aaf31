"""`tcptunnel probe`: each diagnosis word, produced by a real server on loopback.

Every line the probe prints is compared whole; only the clock-dependent parts (time left, "now")
are matched by pattern and then checked against the clock.
"""

import datetime
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import unittest

import certs
import probe_servers
from tunnel_harness import BINARY, Listener, run_binary

UTC = datetime.timezone.utc


def utc_text(moment):
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def seconds_of(left_text):
    """Seconds in a time-left text such as "23h 59m", "2d 3h", "4m" or "12s"."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    return sum(int(number) * units[unit] for number, unit in re.findall(r"(\d+)([dhms])",
                                                                         left_text))


def probe(*args, env=None):
    return run_binary("probe", *args, env=env, timeout=30)


class ProbeTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="tcptunnel-probe-")
        now = datetime.datetime.now(UTC).replace(microsecond=0)
        cls.not_before = now - datetime.timedelta(minutes=5)
        cls.ca = certs.make_ca(cls.tmp)
        cls.good = certs.make_cert(cls.tmp, cls.ca, not_before=cls.not_before)
        cls.not_after = cls.not_before + datetime.timedelta(days=1)
        stranger_ca = certs.make_ca(cls.tmp, "stranger CA")
        cls.stranger = certs.make_cert(cls.tmp, stranger_ca, name="stranger")
        cls.wrong_name = certs.make_cert(cls.tmp, cls.ca, name="wrong-name",
                                         sans=["DNS:other.example"])
        cls.expired_from = now - datetime.timedelta(days=3)
        cls.expired = certs.make_cert(cls.tmp, cls.ca, name="expired",
                                      not_before=cls.expired_from)
        cls.future_from = now + datetime.timedelta(days=2)
        cls.future = certs.make_cert(cls.tmp, cls.ca, name="future", not_before=cls.future_from)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def trusted(self, *args):
        return ["--tls", "--ca-cert", self.ca.cert, *args]

    def assert_only_line(self, result, expected, status):
        self.assertEqual(result.stdout.splitlines(), [expected], result.stderr)
        self.assertEqual(result.stderr, "")
        self.assertEqual(result.returncode, status)

    def assert_ok_tls_detail(self, detail, port):
        """The detail of an ok TLS probe against self.good, with the time it has left."""
        prefix = ("TLSv1.3 with 127.0.0.1:%d, certificate valid until %s ("
                  % (port, utc_text(self.not_after)))
        self.assertTrue(detail.startswith(prefix), detail)
        match = re.fullmatch(r"(\d+[dhms](?: \d+[dhms])?) left\)", detail[len(prefix):])
        self.assertIsNotNone(match, detail)
        expected = (self.not_after - datetime.datetime.now(UTC)).total_seconds()
        self.assertLess(abs(seconds_of(match.group(1)) - expected), 180, detail)

    # --- ok -------------------------------------------------------------------------------

    def test_tcp_probe_of_a_listening_port_is_ok(self):
        with Listener(probe_servers.silent_handler) as server:

            result = probe("--to", "127.0.0.1:%d" % server.port)

        self.assert_only_line(
            result, "probe 127.0.0.1:%d ok connected to 127.0.0.1:%d" % (server.port, server.port),
            0)

    def test_tls_probe_of_a_valid_server_is_ok_and_says_how_long_the_certificate_has_left(self):
        with probe_servers.TlsServer(self.good.cert, self.good.key) as server:

            result = probe("--to", "127.0.0.1:%d" % server.port, *self.trusted())
            server.wait_for_sessions(1)

        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertEqual(result.stderr, "")
        lines = result.stdout.splitlines()
        self.assertEqual(len(lines), 1, lines)
        prefix = "probe 127.0.0.1:%d ok " % server.port
        self.assertTrue(lines[0].startswith(prefix), lines[0])
        self.assert_ok_tls_detail(lines[0][len(prefix):], server.port)
        self.assertEqual((server.completed, server.failed), (1, 0), server.handshake_errors)

    def test_without_ca_cert_the_default_store_decides(self):
        empty_dir = tempfile.mkdtemp(dir=self.tmp)
        with probe_servers.TlsServer(self.good.cert, self.good.key) as server:
            target = "127.0.0.1:%d" % server.port

            trusting = probe("--to", target, "--tls",
                             env={"SSL_CERT_FILE": self.ca.cert, "SSL_CERT_DIR": empty_dir})
            not_trusting = probe("--to", target, "--tls",
                                 env={"SSL_CERT_FILE": self.stranger.cert,
                                      "SSL_CERT_DIR": empty_dir})

        self.assertEqual(trusting.returncode, 0, trusting.stdout)
        self.assertTrue(trusting.stdout.startswith("probe %s ok TLSv1.3 " % target))
        self.assert_only_line(
            not_trusting,
            "probe %s tls-untrusted certificate CN=server (issuer CN=tcptunnel test CA) does not "
            "verify against the default store: unable to get local issuer certificate" % target, 1)

    # --- before TLS ---------------------------------------------------------------------------

    def test_nothing_listening_is_refused(self):
        port = probe_servers.TlsServer(self.good.cert, self.good.key, listen=False)
        port.close()

        result = probe("--to", "127.0.0.1:%d" % port.port, *self.trusted())

        self.assert_only_line(result, "probe 127.0.0.1:%d refused 127.0.0.1:%d (Connection refused)"
                              % (port.port, port.port), 1)

    def test_name_under_invalid_is_dns_nxdomain(self):
        with probe_servers.DnsResponder(rcode=3) as dns:

            result = probe_servers.run_with_resolver(
                dns.resolv_conf(self.tmp), [BINARY, "probe", "--to", "x.invalid:18443"])

        self.assert_only_line(result, "probe x.invalid:18443 dns-nxdomain x.invalid: no such host",
                              1)
        self.assertIn("x.invalid", dns.names)

    def test_resolver_failure_is_dns_temporary(self):
        with probe_servers.DnsResponder(rcode=2) as dns:

            result = probe_servers.run_with_resolver(
                dns.resolv_conf(self.tmp), [BINARY, "probe", "--to", "x.invalid:18443"])

        self.assert_only_line(
            result, "probe x.invalid:18443 dns-temporary x.invalid: temporary resolver failure", 1)
        self.assertIn("x.invalid", dns.names)

    def test_server_that_never_answers_the_client_hello_is_a_timeout(self):
        with Listener(probe_servers.silent_handler) as server:
            started = time.monotonic()

            result = probe("--to", "127.0.0.1:%d" % server.port, *self.trusted("--timeout",
                                                                                 "500ms"))
            elapsed = time.monotonic() - started

        self.assert_only_line(result, "probe 127.0.0.1:%d timeout no TLS handshake with "
                              "127.0.0.1:%d within 500ms" % (server.port, server.port), 1)
        self.assertGreaterEqual(elapsed, 0.45)
        self.assertLess(elapsed, 3.0)

    def test_server_that_resets_on_accept_is_reset(self):
        with Listener(probe_servers.reset_handler) as server:

            result = probe("--to", "127.0.0.1:%d" % server.port, *self.trusted())

        self.assert_only_line(result, "probe 127.0.0.1:%d reset 127.0.0.1:%d (Connection reset "
                              "by peer)" % (server.port, server.port), 1)

    def test_plain_http_server_is_not_tls(self):
        with Listener(probe_servers.plain_http_handler) as server:

            result = probe("--to", "127.0.0.1:%d" % server.port, *self.trusted())

        self.assert_only_line(result, "probe 127.0.0.1:%d not-tls 127.0.0.1:%d answered "
                              "\"HTTP/1.1 400 Bad Request\", not a TLS handshake"
                              % (server.port, server.port), 1)

    # --- certificates -------------------------------------------------------------------------

    def test_certificate_from_another_ca_is_untrusted_and_the_server_logs_no_error(self):
        with probe_servers.TlsServer(self.stranger.cert, self.stranger.key) as server:

            result = probe("--to", "127.0.0.1:%d" % server.port, *self.trusted())
            server.wait_for_sessions(1)

        self.assert_only_line(
            result, "probe 127.0.0.1:%d tls-untrusted certificate CN=stranger (issuer "
            "CN=stranger CA) does not verify against CA file %s: unable to get local issuer "
            "certificate" % (server.port, self.ca.cert), 1)
        self.assertEqual((server.completed, server.failed), (1, 0), server.handshake_errors)
        self.assertEqual(server.session_errors, [])

    def test_certificate_without_the_server_name_is_a_mismatch_that_lists_the_sans(self):
        with probe_servers.TlsServer(self.wrong_name.cert, self.wrong_name.key) as server:

            result = probe("--to", "127.0.0.1:%d" % server.port, *self.trusted())

        self.assert_only_line(result, "probe 127.0.0.1:%d tls-name-mismatch localhost is not "
                              "among the certificate's names: DNS:other.example" % server.port, 1)

    def test_server_name_is_checked_against_ip_sans_too(self):
        with probe_servers.TlsServer(self.good.cert, self.good.key) as server:
            target = "127.0.0.1:%d" % server.port

            listed = probe("--to", target, *self.trusted("--server-name", "::1"))
            unlisted = probe("--to", target, *self.trusted("--server-name", "127.0.0.2"))

        self.assertEqual(listed.returncode, 0, listed.stdout)
        self.assert_only_line(unlisted, "probe %s tls-name-mismatch 127.0.0.2 is not among the "
                              "certificate's names: DNS:localhost, IP:127.0.0.1, IP:::1" % target,
                              1)

    def check_validity_line(self, result, port, word, cert_name, valid_from):
        prefix = ("probe 127.0.0.1:%d %s certificate CN=%s valid from %s until %s, now "
                  % (port, word, cert_name, utc_text(valid_from),
                     utc_text(valid_from + datetime.timedelta(days=1))))
        lines = result.stdout.splitlines()
        self.assertEqual(len(lines), 1, lines)
        self.assertTrue(lines[0].startswith(prefix), lines[0])
        now = datetime.datetime.strptime(lines[0][len(prefix):], "%Y-%m-%dT%H:%M:%SZ")
        skew = abs((now.replace(tzinfo=UTC) - datetime.datetime.now(UTC)).total_seconds())
        self.assertLess(skew, 30)
        self.assertEqual(result.returncode, 1)

    def test_expired_certificate_is_tls_expired_with_its_dates(self):
        with probe_servers.TlsServer(self.expired.cert, self.expired.key) as server:

            result = probe("--to", "127.0.0.1:%d" % server.port, *self.trusted())

        self.check_validity_line(result, server.port, "tls-expired", "expired", self.expired_from)

    def test_certificate_not_yet_valid_is_tls_not_yet_valid_with_its_dates(self):
        with probe_servers.TlsServer(self.future.cert, self.future.key) as server:

            result = probe("--to", "127.0.0.1:%d" % server.port, *self.trusted())

        self.check_validity_line(result, server.port, "tls-not-yet-valid", "future",
                                 self.future_from)

    def test_unreadable_ca_file_is_ca_missing_without_connecting(self):
        not_pem = probe_servers.file_with(self.tmp, "not-pem.crt", b"not a certificate\n")
        missing = os.path.join(self.tmp, "missing.crt")
        with Listener(probe_servers.silent_handler) as server:
            target = "127.0.0.1:%d" % server.port

            absent = probe("--to", target, "--tls", "--ca-cert", missing)
            empty = probe("--to", target, "--tls", "--ca-cert", not_pem)
            folder = probe("--to", target, "--tls", "--ca-cert", self.tmp)

        self.assert_only_line(absent, "probe %s ca-missing cannot read CA file %s: No such file "
                              "or directory" % (target, missing), 1)
        self.assert_only_line(empty, "probe %s ca-missing no PEM certificate in CA file %s"
                              % (target, not_pem), 1)
        self.assert_only_line(folder, "probe %s ca-missing cannot read CA file %s: Is a "
                              "directory" % (target, self.tmp), 1)
        self.assertEqual(server.accepted, 0)

    def test_server_that_demands_a_client_certificate_is_tls_error(self):
        with probe_servers.TlsServer(self.good.cert, self.good.key,
                                     client_ca=self.ca.cert) as server:

            result = probe("--to", "127.0.0.1:%d" % server.port, *self.trusted())

        self.assert_only_line(result, "probe 127.0.0.1:%d tls-error 127.0.0.1:%d refused the TLS "
                              "session after the handshake: tlsv13 alert certificate required"
                              % (server.port, server.port), 1)

    @unittest.skipUnless(probe_servers.realtime_priority_allowed(),
                         "the relay cannot take real-time priority here")
    def test_refusal_after_the_handshake_still_decides_when_the_probe_is_late(self):
        # On a loaded machine the server's alert, and the reset its close sends, can both arrive
        # before the probe writes its close_notify: the write fails, the alert is still queued.
        self.check_late_probe_sees_the_refusal(
            [], "tls-error 127.0.0.1:%d refused the TLS session after the handshake: "
            "tlsv13 alert certificate required")

    @unittest.skipUnless(probe_servers.realtime_priority_allowed(),
                         "the relay cannot take real-time priority here")
    def test_refusal_after_the_handshake_still_decides_when_the_get_is_late(self):
        self.check_late_probe_sees_the_refusal(
            ["--http-get", "/"], "tls-error GET /: 127.0.0.1:%d refused the TLS session after "
            "the handshake: tlsv13 alert certificate required")

    def check_late_probe_sees_the_refusal(self, extra_args, expected_verdict):
        with probe_servers.TlsServer(self.good.cert, self.good.key,
                                     client_ca=self.ca.cert) as server, \
                probe_servers.LateClientRelay(server.port) as relay:
            target = "127.0.0.1:%d" % relay.port
            process = subprocess.Popen([BINARY, "probe", "--to", target, *self.trusted(),
                                        *extra_args],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            relay.attach(process)
            stdout, stderr = process.communicate(timeout=30)

        self.assertIsNone(relay.error)
        self.assertTrue(relay.client_stopped)
        expected = "probe %s %s" % (target, expected_verdict % relay.port)
        self.assertEqual(stdout.splitlines(), [expected], stderr)
        self.assertEqual(process.returncode, 1)

    # --- HTTP ---------------------------------------------------------------------------------

    def test_http_get_of_a_served_path_is_ok(self):
        www = tempfile.mkdtemp(dir=self.tmp)
        probe_servers.file_with(www, "api/v3/rate_limit", b'{"resources":{}}\n')
        with probe_servers.OpensslWwwServer(www, self.good.cert, self.good.key) as server:

            result = probe("--to", "127.0.0.1:%d" % server.port,
                           *self.trusted("--http-get", "/api/v3/rate_limit"))
            time.sleep(0.2)

        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        lines = result.stdout.splitlines()
        self.assertEqual(len(lines), 1, lines)
        prefix = "probe 127.0.0.1:%d ok GET /api/v3/rate_limit: HTTP/1.0 200 ok; " % server.port
        self.assertTrue(lines[0].startswith(prefix), lines[0])
        self.assert_ok_tls_detail(lines[0][len(prefix):], server.port)
        self.assertIn("FILE:api/v3/rate_limit", server.lines)
        self.assertEqual([line for line in server.lines if "error" in line.lower()], [])

    def test_http_get_of_a_missing_path_is_http_404(self):
        www = tempfile.mkdtemp(dir=self.tmp)
        with probe_servers.HttpsServer(www, self.good.cert, self.good.key) as server:

            result = probe("--to", "127.0.0.1:%d" % server.port,
                           *self.trusted("--http-get", "/api/v3/rate_limit"))

        self.assert_only_line(result, "probe 127.0.0.1:%d http-404 GET /api/v3/rate_limit: "
                              "HTTP/1.0 404 File not found" % server.port, 1)

    # --- retries and output -------------------------------------------------------------------

    def test_server_that_comes_up_after_the_second_attempt_is_ok_on_the_third(self):
        server = probe_servers.TlsServer(self.good.cert, self.good.key, listen=False)
        target = "127.0.0.1:%d" % server.port
        process = subprocess.Popen(
            [BINARY, "probe", "--to", target, *self.trusted("--retries", "3", "--retry-delay",
                                                            "500ms")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            first = process.stdout.readline().rstrip("\n")
            second = process.stdout.readline().rstrip("\n")
            server.listen()

            rest, errors = process.communicate(timeout=20)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            server.close()

        refused = "probe %s refused %s (Connection refused) " % (target, target)
        self.assertEqual(first, refused + "(attempt 1 of 4, next in 500ms)")
        self.assertEqual(second, refused + "(attempt 2 of 4, next in 1s)")
        third = rest.splitlines()
        self.assertEqual(len(third), 1, third)
        prefix = "probe %s ok " % target
        suffix = " (attempt 3 of 4)"
        self.assertTrue(third[0].startswith(prefix) and third[0].endswith(suffix), third[0])
        self.assert_ok_tls_detail(third[0][len(prefix):-len(suffix)], server.port)
        self.assertEqual(errors, "")
        self.assertEqual(process.returncode, 0)

    def test_every_failed_attempt_prints_a_line_and_the_last_one_decides(self):
        with Listener(probe_servers.reset_handler) as server:
            target = "127.0.0.1:%d" % server.port
            started = time.monotonic()

            result = probe("--to", target, *self.trusted("--retries", "2", "--retry-delay",
                                                         "100ms", "--retry-delay-max", "150ms"))
            elapsed = time.monotonic() - started

        reset = "probe %s reset %s (Connection reset by peer)" % (target, target)
        self.assertEqual(result.stdout.splitlines(), [
            reset + " (attempt 1 of 3, next in 100ms)",
            reset + " (attempt 2 of 3, next in 150ms)",
            reset + " (attempt 3 of 3)"])
        self.assertEqual(result.returncode, 1)
        self.assertGreaterEqual(elapsed, 0.25)

    def test_retry_delay_max_caps_the_first_pause_too(self):
        with Listener(probe_servers.reset_handler) as server:
            target = "127.0.0.1:%d" % server.port
            started = time.monotonic()

            result = probe("--to", target, *self.trusted("--retries", "2", "--retry-delay",
                                                         "5s", "--retry-delay-max", "50ms"))
            elapsed = time.monotonic() - started

        reset = "probe %s reset %s (Connection reset by peer)" % (target, target)
        self.assertEqual(result.stdout.splitlines(), [
            reset + " (attempt 1 of 3, next in 50ms)",
            reset + " (attempt 2 of 3, next in 50ms)",
            reset + " (attempt 3 of 3)"])
        self.assertLess(elapsed, 2.0)

    def test_json_format_carries_the_same_verdict_one_object_a_line(self):
        with probe_servers.TlsServer(self.good.cert, self.good.key) as server:
            target = "127.0.0.1:%d" % server.port

            ok = probe("--to", target, *self.trusted("--format", "json"))
            mismatch = probe("--to", target, *self.trusted("--format", "json", "--server-name",
                                                           "proxy.example", "--retries", "1",
                                                           "--retry-delay", "0"))

        self.assertEqual(ok.returncode, 0)
        line = json.loads(ok.stdout)
        detail = line.pop("detail")
        self.assert_ok_tls_detail(detail, server.port)
        self.assertEqual(line, {"probe": target, "word": "ok", "address": target,
                                "not_after": utc_text(self.not_after), "attempt": 1,
                                "max_attempts": 1, "last": True})
        self.assertEqual(mismatch.returncode, 1)
        names = ("proxy.example is not among the certificate's names: DNS:localhost, "
                 "IP:127.0.0.1, IP:::1")
        common = {"probe": target, "word": "tls-name-mismatch", "detail": names,
                  "address": target, "not_after": utc_text(self.not_after), "max_attempts": 2}
        self.assertEqual([json.loads(text) for text in mismatch.stdout.splitlines()], [
            dict(common, attempt=1, last=False, retry_in_ms=0),
            dict(common, attempt=2, last=True)])

    def test_usage_errors_exit_2_with_one_line_on_stderr(self):
        cases = [
            (["--to", "nowhere"],
             "tcptunnel: probe: --to \"nowhere\": missing port (expected HOST:PORT or "
             "[IPV6]:PORT)"),
            (["--ca-cert", "ca.crt"], "tcptunnel: probe: --ca-cert needs --tls"),
            (["--timeout", "soon"],
             "tcptunnel: probe: --timeout \"soon\": duration must start with a whole number "
             "(expected a duration such as 500ms, 10s or 2m)"),
            (["--bogus"], "tcptunnel: probe: unknown option --bogus (see tcptunnel probe --help)"),
            # A bad value from a variable names the variable.
            (["--to", "127.0.0.1:1", {"TCPTUNNEL_PROBE_TIMEOUT": "3"}],
             "tcptunnel: probe: TCPTUNNEL_PROBE_TIMEOUT \"3\": duration needs a unit: ms, s, m or "
             "h (expected a duration such as 500ms, 10s or 2m)"),
            (["--to", "127.0.0.1:1", {"TCPTUNNEL_PROBE_RETRIES": "101"}],
             "tcptunnel: probe: TCPTUNNEL_PROBE_RETRIES: Value 101 not in range 0 to 100 (see "
             "tcptunnel probe --help)"),
        ]
        for args, expected in cases:
            with self.subTest(args=args):
                env = args.pop() if isinstance(args[-1], dict) else None

                result = probe(*args, env=env)

                self.assertEqual(result.stdout, "")
                self.assertEqual(result.stderr.splitlines(), [expected])
                self.assertEqual(result.returncode, 2)

    def test_target_defaults_to_the_tunnels_upstream_from_tcptunnel_to(self):
        with Listener(probe_servers.silent_handler) as server:
            target = "127.0.0.1:%d" % server.port

            result = probe(env={"TCPTUNNEL_TO": target})

        self.assert_only_line(result, "probe %s ok connected to %s" % (target, target), 0)

    # --- the handed case: probe-completes-handshake -------------------------------------------

    def test_tls_probe_completes_the_handshake_where_a_bare_connect_breaks_it(self):
        with probe_servers.TlsServer(self.good.cert, self.good.key) as server:
            for _ in range(20):
                with socket.create_connection(("127.0.0.1", server.port), timeout=5):
                    pass
            server.wait_for_sessions(20)
            bare_failures = server.failed

            results = [probe("--to", "127.0.0.1:%d" % server.port, *self.trusted())
                       for _ in range(20)]
            server.wait_for_sessions(40)
            time.sleep(0.2)

        self.assertEqual(bare_failures, 20, server.handshake_errors)
        self.assertEqual([result.returncode for result in results], [0] * 20)
        prefix = "probe 127.0.0.1:%d ok TLSv1.3 with " % server.port
        self.assertEqual([r.stdout.startswith(prefix) for r in results], [True] * 20)
        self.assertEqual((server.completed, server.failed), (20, 20), server.handshake_errors)
        self.assertEqual(server.session_errors, [])


if __name__ == "__main__":
    unittest.main()
