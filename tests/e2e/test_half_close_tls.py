"""A TLS peer that ends its sending side keeps receiving until the other side ends too.

The client is Node's TLS socket, as in the cli-proxy's world: `tls.connect(...).end("ping\\n")`
sends the request, a close_notify and a TCP FIN, then reads on. The upstream is a Python TLS
server (the test CA's certificate) driven through memory BIOs, so that close_notify, the FIN and
the reads around them happen in exactly the order the scenario needs. Each scenario runs once
straight to the server, which shows the peers themselves behave, and once through the tunnel.
"""

import hashlib
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import unittest

import certs
from tunnel_harness import Listener, Tunnel

# Sizes not a multiple of any buffer, large enough for several reads (and for the splice path).
REPLY = hashlib.shake_256(b"tcptunnel half-close reply").digest(300 * 1024 + 7)
LATE_LINE = b"late line after the upstream's end\n"
PEER_TIMEOUT = 10.0
NODE_TIMEOUT_MS = 15000
# A tunnel that tears a connection down shortly after one side's FIN shows up within this.
PAUSE_AFTER_EOF = 0.3

NODE_CLIENT = r"""
const tls = require("tls");
const fs = require("fs");
const crypto = require("crypto");
const [host, port, caFile, mode, lateLine, pauseMs, timeoutMs] = process.argv.slice(1);
const digest = crypto.createHash("sha256");
let received = 0;
let sawEnd = false;
let reported = false;
function report(error) {
  if (reported) return;
  reported = true;
  process.stdout.write(JSON.stringify(
      {received, sha256: digest.digest("hex"), sawEnd, error: error || null}) + "\n");
  process.exitCode = error ? 1 : 0;
}
const socket = tls.connect({host, port: Number(port), ca: fs.readFileSync(caFile),
                            allowHalfOpen: mode === "write-after-eof"});
if (mode === "end-after-request") socket.end("ping\n");
socket.on("data", (chunk) => { received += chunk.length; digest.update(chunk); });
socket.on("end", () => {
  sawEnd = true;
  if (mode === "write-after-eof") {
    setTimeout(() => socket.end(lateLine), Number(pauseMs));
  }
});
socket.on("error", (error) => { report(error.code || error.message); socket.destroy(); });
socket.on("close", () => report(sawEnd ? null : "closed without end"));
setTimeout(() => { report("timeout"); process.exit(1); }, Number(timeoutMs)).unref();
"""


class TlsOverSocket:
    """The server side of TLS on a plain socket, through memory BIOs.

    An ssl.SSLSocket cannot send close_notify and keep reading, nor tell a close_notify from the
    TCP FIN; here each step is explicit.
    """

    def __init__(self, sock, context):
        self.sock = sock
        self.sock.settimeout(PEER_TIMEOUT)
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.close_notify_received = False
        self.tcp_eof = False

    def _flush(self):
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def _fill(self):
        data = self.sock.recv(65536)
        if data:
            self.incoming.write(data)
        else:
            self.tcp_eof = True
            self.incoming.write_eof()

    def handshake(self):
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()
        self._flush()

    def read(self):
        """Application bytes, or b"" once the peer's close_notify (or a bare FIN) has arrived."""
        while True:
            try:
                data = self.tls.read(65536)
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()
                continue
            except ssl.SSLZeroReturnError:
                data = b""
            except ssl.SSLEOFError:
                return b""
            if not data:
                self.close_notify_received = True
            return data

    def read_line(self):
        data = b""
        while not data.endswith(b"\n"):
            chunk = self.read()
            if not chunk:
                break
            data += chunk
        return data

    def read_to_end(self):
        chunks = []
        while True:
            chunk = self.read()
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)

    def wait_for_fin(self):
        """Waits for the TCP FIN itself, after the close_notify that usually comes first."""
        while not self.tcp_eof:
            self._fill()

    def write(self, data):
        self.tls.write(data)
        self._flush()

    def end(self):
        """close_notify, then the TCP FIN; reading stays possible."""
        try:
            self.tls.unwrap()
        except ssl.SSLWantReadError:
            pass  # the close_notify is sent; the peer's comes later, if at all
        self._flush()
        self.sock.shutdown(socket.SHUT_WR)


class HalfCloseTlsTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="tcptunnel-e2e-")
        cls.pki = certs.make_pki(cls.tmp)
        cls.server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cls.server_context.load_cert_chain(cls.pki.server_cert, cls.pki.server_key)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def start_upstream(self, scenario):
        """A server running `scenario(tls, seen)` per connection; `seen` collects its findings."""
        seen = {}

        def handler(conn):
            tls = TlsOverSocket(conn, self.server_context)
            tls.handshake()
            scenario(tls, seen)
            seen["done"] = True

        upstream = Listener(handler)
        self.addCleanup(upstream.close)
        return upstream, seen

    def start_tunnel(self, upstream):
        tunnel = Tunnel("--listen", "localhost:0", "--to", "127.0.0.1:%d" % upstream.port)
        self.addCleanup(tunnel.stop)
        return tunnel

    def run_node_client(self, host, port, mode):
        args = [host, port, self.pki.ca_cert, mode, LATE_LINE.decode(),
                int(PAUSE_AFTER_EOF * 1000), NODE_TIMEOUT_MS]
        # Built from nothing: no NODE_EXTRA_CA_CERTS, no proxy variables from outside.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": self.tmp}
        result = subprocess.run(["node", "-e", NODE_CLIENT, *map(str, args)],
                                capture_output=True, text=True, env=env,
                                timeout=NODE_TIMEOUT_MS / 1000 + 10)
        self.assertTrue(result.stdout.strip(), "node said nothing: " + result.stderr)
        return json.loads(result.stdout.strip().splitlines()[-1])

    def wait_until_done(self, upstream, seen):
        deadline = time.monotonic() + PEER_TIMEOUT + 5
        while time.monotonic() < deadline and "done" not in seen and not upstream.errors:
            time.sleep(0.02)
        self.assertEqual(upstream.errors, [])
        self.assertTrue(seen.get("done"), seen)

    def close_line(self, tunnel):
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not tunnel.log_lines("close"):
            time.sleep(0.02)
        lines = tunnel.log_lines("close")
        self.assertEqual(len(lines), 1, tunnel.stderr())
        return dict(re.findall(r"(\w+)=(\S+)", lines[0]))

    # The upstream answers only after the client's close_notify and FIN have both arrived.
    @staticmethod
    def reply_after_client_fin(tls, seen):
        seen["request"] = tls.read_line()
        seen["after_request"] = tls.read_to_end()
        seen["close_notify"] = tls.close_notify_received
        tls.wait_for_fin()
        time.sleep(PAUSE_AFTER_EOF)
        tls.write(REPLY)
        tls.end()

    # The upstream sends everything and ends first, then reads what the client sends after that.
    @staticmethod
    def end_first_then_read(tls, seen):
        tls.write(REPLY)
        tls.end()
        seen["late"] = tls.read_to_end()
        seen["close_notify"] = tls.close_notify_received
        tls.wait_for_fin()

    def check_client_half_close(self, host, port_of):
        upstream, seen = self.start_upstream(self.reply_after_client_fin)
        port, tunnel = port_of(upstream)

        client = self.run_node_client(host, port, "end-after-request")

        self.assertIsNone(client["error"], client)
        self.assertTrue(client["sawEnd"], client)
        self.assertEqual(client["received"], len(REPLY))
        self.assertEqual(client["sha256"], hashlib.sha256(REPLY).hexdigest())
        self.wait_until_done(upstream, seen)
        self.assertEqual(seen["request"], b"ping\n")
        self.assertEqual(seen["after_request"], b"")
        self.assertTrue(seen["close_notify"], seen)
        return tunnel

    def check_upstream_half_close(self, host, port_of):
        upstream, seen = self.start_upstream(self.end_first_then_read)
        port, tunnel = port_of(upstream)

        client = self.run_node_client(host, port, "write-after-eof")

        self.assertIsNone(client["error"], client)
        self.assertTrue(client["sawEnd"], client)
        self.assertEqual(client["received"], len(REPLY))
        self.assertEqual(client["sha256"], hashlib.sha256(REPLY).hexdigest())
        self.wait_until_done(upstream, seen)
        self.assertEqual(seen["late"], LATE_LINE)
        self.assertTrue(seen["close_notify"], seen)
        return tunnel

    def straight(self, upstream):
        return upstream.port, None

    def through_tunnel(self, upstream):
        tunnel = self.start_tunnel(upstream)
        return tunnel.port, tunnel

    def test_client_half_close_gets_the_reply_straight_to_the_server(self):
        self.check_client_half_close("127.0.0.1", self.straight)

    def test_client_half_close_still_gets_the_reply_through_the_tunnel(self):
        tunnel = self.check_client_half_close("localhost", self.through_tunnel)

        close = self.close_line(tunnel)
        self.assertEqual((close["closed_by"], close["how"]), ("client", "fin"), close)
        self.assertGreater(int(close["from_client"]), len(b"ping\n"), close)
        self.assertGreater(int(close["from_upstream"]), len(REPLY), close)

    def test_upstream_half_close_reads_the_late_data_straight_from_the_client(self):
        self.check_upstream_half_close("127.0.0.1", self.straight)

    def test_upstream_half_close_still_reads_the_late_data_through_the_tunnel(self):
        tunnel = self.check_upstream_half_close("localhost", self.through_tunnel)

        close = self.close_line(tunnel)
        self.assertEqual((close["closed_by"], close["how"]), ("upstream", "fin"), close)
        self.assertGreater(int(close["from_client"]), len(LATE_LINE), close)
        self.assertGreater(int(close["from_upstream"]), len(REPLY), close)


if __name__ == "__main__":
    unittest.main()
