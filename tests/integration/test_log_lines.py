"""The log lines of relayed connections: the close summary in text and JSON, and nothing a peer
sends ever written to the log raw.

Every peer is a socket of this process on loopback.
"""

import json
import re
import socket
import time
import unittest

from tunnel_harness import (Listener, Tunnel, connect, log_fields, read_exactly, recv_all,
                            wait_for_lines)

SUMMARY_KEYS = ["id", "client", "upstream", "connect_ms", "duration_ms", "from_client",
                "from_upstream", "closed_by", "how"]
TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (error|warn|info|debug) [a-z_]+")


class SummaryLineTest(unittest.TestCase):

    def setUp(self):
        def answer(conn):
            read_exactly(conn, 3000)
            conn.sendall(bytes(7000))
            recv_all(conn)
            conn.shutdown(socket.SHUT_WR)

        self.upstream = Listener(answer)
        self.addCleanup(self.upstream.close)

    def _exchange(self, port, host="127.0.0.1", hold=0.2):
        with connect(port, host) as client:
            client.sendall(bytes(3000))
            self.assertEqual(len(read_exactly(client, 7000)), 7000)
            time.sleep(hold)
            client.shutdown(socket.SHUT_WR)
            self.assertEqual(recv_all(client), b"")
            return client.getsockname()[1]

    def test_text_summary_has_every_field_with_the_right_values(self):
        tunnel = Tunnel("--listen", "localhost:0", "--to", "127.0.0.1:%d" % self.upstream.port)
        self.addCleanup(tunnel.stop)

        ports = {"127.0.0.1": self._exchange(tunnel.port),
                 "[::1]": self._exchange(tunnel.port, "::1")}
        lines = wait_for_lines(tunnel, "close", 2)

        self.assertEqual(len(lines), 2, lines)
        for line, (client_host, client_port) in zip(lines, ports.items()):
            keys = re.findall(r" (\w+)=", line)
            self.assertEqual(keys, SUMMARY_KEYS, line)
            fields = log_fields(line)
            self.assertRegex(fields["id"], r"^\d+$")
            self.assertEqual(fields["client"], "%s:%d" % (client_host, client_port))
            self.assertEqual(fields["upstream"], "127.0.0.1:%d" % self.upstream.port)
            self.assertGreaterEqual(float(fields["connect_ms"]), 0.0)
            self.assertGreaterEqual(float(fields["duration_ms"]), 200.0)
            self.assertLess(float(fields["duration_ms"]), 5000.0)
            self.assertEqual((fields["from_client"], fields["from_upstream"]), ("3000", "7000"))
            self.assertEqual((fields["closed_by"], fields["how"]), ("client", "fin"))
        self.assertEqual(len({log_fields(line)["id"] for line in lines}), 2)

    def test_json_format_writes_one_object_a_line_with_the_same_fields(self):
        tunnel = Tunnel("--listen", "127.0.0.1:0", "--to", "127.0.0.1:%d" % self.upstream.port,
                        "--log-format", "json", "--log-level", "debug")
        client_port = self._exchange(tunnel.port)
        wait_for_lines(tunnel, "close", 1)
        status, stderr = tunnel.stop()

        self.assertEqual(status, 0)
        objects = [json.loads(line) for line in stderr.splitlines()]
        closes = [each for each in objects if each["event"] == "close"]
        self.assertEqual(len(closes), 1, objects)
        close = closes[0]
        self.assertEqual(list(close), ["time", "level", "event"] + SUMMARY_KEYS)
        self.assertEqual(close["level"], "info")
        self.assertEqual(close["client"], "127.0.0.1:%d" % client_port)
        self.assertEqual(close["upstream"], "127.0.0.1:%d" % self.upstream.port)
        self.assertEqual((close["from_client"], close["from_upstream"]), (3000, 7000))
        self.assertEqual((close["closed_by"], close["how"]), ("client", "fin"))
        # Numbers are JSON numbers, so a script can compare them (jq '.duration_ms > 100').
        self.assertIsInstance(close["id"], int)
        for key in ("connect_ms", "duration_ms"):
            self.assertIsInstance(close[key], (int, float), "%s=%r" % (key, close[key]))
        self.assertGreaterEqual(close["duration_ms"], 200)
        for each in objects:
            self.assertRegex(each["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


class NothingRawInTheLogTest(unittest.TestCase):

    def test_bytes_the_peers_send_never_reach_the_log_even_at_debug(self):
        # Payloads shaped as forged log lines with terminal escapes: the log must not show them.
        forged_client = b"\n2000-01-01T00:00:00.000Z info close id=999 marker-from-client\x1b[2J\r"
        forged_upstream = b"\n2000-01-01T00:00:00.000Z error stopped marker-from-upstream\x07\n"

        def answer(conn):
            recv_all(conn)
            conn.sendall(forged_upstream)
            conn.shutdown(socket.SHUT_WR)

        upstream = Listener(answer)
        self.addCleanup(upstream.close)
        tunnel = Tunnel("--listen", "127.0.0.1:0", "--to", "127.0.0.1:%d" % upstream.port,
                        "--log-level", "debug")
        with connect(tunnel.port) as client:
            client.sendall(forged_client)
            client.shutdown(socket.SHUT_WR)
            reply = recv_all(client)
        wait_for_lines(tunnel, "close", 1)
        status, stderr = tunnel.stop()

        self.assertEqual((status, reply), (0, forged_upstream))
        self.assertNotIn("marker-from", stderr)
        self.assertNotIn("\x1b", stderr)
        for line in stderr.splitlines():
            self.assertRegex(line, TEXT_LINE)


if __name__ == "__main__":
    unittest.main()
