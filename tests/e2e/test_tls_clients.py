"""Real TLS clients (curl, gh) reach a real TLS server through the tunnel, as in the cli-proxy.

The upstream is `openssl s_server -WWW` on 127.0.0.1 only, with the test CA's certificate (SANs
localhost, 127.0.0.1, ::1); it serves a fake GitHub Enterprise `api/v3/rate_limit`. The tunnel
listens on localhost (both loopback families). The clients trust only the test CA and get an
environment with no proxy variables and no other trust store, so they can reach nothing else.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import unittest

import certs
from tunnel_harness import Tunnel

CLIENT_TIMEOUT = 8  # each client call normally takes well under a second
RATE_LIMIT = {"resources": {"core": {"limit": 5000, "remaining": 4999, "reset": 1767225600}},
              "rate": {"limit": 5000, "remaining": 4999, "reset": 1767225600}}
INDEX_HTML = b"<!doctype html><title>fake DIFC proxy</title><p>served through tcptunnel</p>\n"


def ipv6_loopback_usable():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


def log_fields(line):
    return dict(re.findall(r'(\w+)=("[^"]*"|\S+)', line))


class StaticTlsServer:
    """`openssl s_server -WWW` serving `docroot` on `host`, on a port the kernel picks."""

    def __init__(self, docroot, cert, key, host="127.0.0.1", ready_timeout=10.0):
        self.process = subprocess.Popen(
            ["openssl", "s_server", "-WWW", "-accept", "%s:0" % host, "-cert", cert, "-key", key],
            cwd=docroot, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, errors="replace")
        self._lines = []
        self._accepting = threading.Event()
        self.port = None
        self._drainer = threading.Thread(target=self._drain, daemon=True)
        self._drainer.start()
        if not self._accepting.wait(ready_timeout):
            self.close()
            raise RuntimeError("s_server did not start: " + self.output())

    def _drain(self):
        for line in self.process.stdout:
            self._lines.append(line)
            match = re.match(r"ACCEPT \S+:(\d+)$", line.strip())
            if match:
                self.port = int(match.group(1))
                self._accepting.set()

    def output(self):
        return "".join(self._lines)

    def wait_for_output(self, needle, timeout=5.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.output():
                return True
            time.sleep(0.02)
        return False

    def close(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._drainer.join(5)
        self.process.stdout.close()


class TlsClientsThroughTunnelTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="tcptunnel-e2e-")
        cls.pki = certs.make_pki(cls.tmp)
        cls.docroot = os.path.join(cls.tmp, "www")
        os.makedirs(os.path.join(cls.docroot, "api", "v3"))
        with open(os.path.join(cls.docroot, "api", "v3", "rate_limit"), "w") as out:
            json.dump(RATE_LIMIT, out)
        with open(os.path.join(cls.docroot, "index.html"), "wb") as out:
            out.write(INDEX_HTML)
        cls.upstream = StaticTlsServer(cls.docroot, cls.pki.server_cert, cls.pki.server_key)

    @classmethod
    def tearDownClass(cls):
        cls.upstream.close()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        self.tunnel = Tunnel("--listen", "localhost:0", "--to", "127.0.0.1:%d" % self.upstream.port)
        self.addCleanup(self.tunnel.stop)
        self.home = tempfile.mkdtemp(dir=self.tmp, prefix="home-")

    def client_env(self, **extra):
        # Built from nothing: no HTTP(S)_PROXY, no SSL_CERT_DIR, no CURL_CA_BUNDLE from outside.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": self.home,
               "LANG": "C.UTF-8"}
        env.update(extra)
        return env

    def curl(self, *args):
        return subprocess.run(
            ["curl", "--silent", "--show-error", "--fail", "--max-time", str(CLIENT_TIMEOUT),
             "--noproxy", "*", "--cacert", self.pki.ca_cert, *args],
            capture_output=True, env=self.client_env(), timeout=CLIENT_TIMEOUT + 5)

    def gh_api_rate_limit(self, host):
        env = self.client_env(
            GH_HOST=host, GH_ENTERPRISE_TOKEN="x", SSL_CERT_FILE=self.pki.ca_cert,
            GH_CONFIG_DIR=os.path.join(self.home, "gh"),
            XDG_CONFIG_HOME=os.path.join(self.home, ".config"),
            XDG_CACHE_HOME=os.path.join(self.home, ".cache"),
            XDG_STATE_HOME=os.path.join(self.home, ".local", "state"),
            XDG_DATA_HOME=os.path.join(self.home, ".local", "share"),
            GH_NO_UPDATE_NOTIFIER="1", GH_PROMPT_DISABLED="1", NO_COLOR="1")
        return subprocess.run(["gh", "api", "rate_limit"], capture_output=True, text=True,
                              env=env, timeout=CLIENT_TIMEOUT)

    def single_close_line(self):
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not self.tunnel.log_lines("close"):
            time.sleep(0.02)
        lines = self.tunnel.log_lines("close")
        self.assertEqual(len(lines), 1, self.tunnel.stderr())
        return log_fields(lines[0])

    def assert_relayed_both_ways(self, close, client_prefix, body_length):
        self.assertTrue(close["client"].startswith(client_prefix), close)
        self.assertEqual(close["upstream"], "127.0.0.1:%d" % self.upstream.port)
        # A TLS handshake alone is a few hundred bytes each way; the reply carries the body too.
        self.assertGreater(int(close["from_client"]), 200, close)
        self.assertGreater(int(close["from_upstream"]), 200 + body_length, close)
        self.assertEqual(close["how"], "fin", close)

    def test_curl_over_ipv4_by_name_gets_the_file(self):
        result = self.curl("-4", "https://localhost:%d/index.html" % self.tunnel.port)

        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, INDEX_HTML)
        self.assert_relayed_both_ways(self.single_close_line(), "127.0.0.1:", len(INDEX_HTML))

    def test_curl_over_ipv6_by_name_gets_the_file(self):
        if not ipv6_loopback_usable():
            self.skipTest("no IPv6 loopback on this machine")

        result = self.curl("-6", "https://localhost:%d/index.html" % self.tunnel.port)

        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, INDEX_HTML)
        self.assert_relayed_both_ways(self.single_close_line(), "[::1]:", len(INDEX_HTML))

    def test_curl_to_the_ipv6_literal_gets_the_api_file(self):
        if not ipv6_loopback_usable():
            self.skipTest("no IPv6 loopback on this machine")

        result = self.curl("https://[::1]:%d/api/v3/rate_limit" % self.tunnel.port)

        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(json.loads(result.stdout), RATE_LIMIT)
        self.assert_relayed_both_ways(self.single_close_line(), "[::1]:",
                                      len(json.dumps(RATE_LIMIT)))

    def test_gh_api_rate_limit_through_the_tunnel_returns_the_json(self):
        result = self.gh_api_rate_limit("localhost:%d" % self.tunnel.port)

        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(json.loads(result.stdout), RATE_LIMIT)
        self.assertTrue(self.upstream.wait_for_output("FILE:api/v3/rate_limit"),
                        self.upstream.output())
        self.assert_relayed_both_ways(self.single_close_line(), ("127.0.0.1:", "[::1]:"),
                                      len(json.dumps(RATE_LIMIT)))

    def test_gh_refuses_a_server_whose_address_is_not_in_the_certificate(self):
        # Straight to a server on 127.0.0.2, an address the certificate does not name: this is
        # what proves that gh checks the SANs, and so that the tunnel's "localhost" is what
        # makes the call above succeed.
        stray = StaticTlsServer(self.docroot, self.pki.server_cert, self.pki.server_key,
                                host="127.0.0.2")
        self.addCleanup(stray.close)

        result = self.gh_api_rate_limit("127.0.0.2:%d" % stray.port)

        self.assertNotEqual(result.returncode, 0, result.stdout)
        self.assertIn("x509: certificate is valid for", result.stderr)
        self.assertIn("not 127.0.0.2", result.stderr)
        self.assertTrue(stray.wait_for_output("bad certificate"), stray.output())
        self.assertNotIn("FILE:", stray.output())


if __name__ == "__main__":
    unittest.main()
