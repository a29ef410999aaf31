"""Real TLS peers and raw clients for the access-control tests: a counting forwarder's handler,
`openssl s_server -WWW`, a captured ClientHello, and clients that report a reset.

Everything here runs on loopback and is ended by the PID or socket it made.
"""

import re
import socket
import subprocess
import threading
import time

from tunnel_harness import Listener

CLIENT_TIMEOUT = 8  # each client call normally takes well under a second


def forward_to(port):
    """A Listener handler relaying a connection to 127.0.0.1:port, both ways, until both ends."""
    def pump(source, sink):
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    sink.shutdown(socket.SHUT_WR)
                    return
                sink.sendall(data)
        except OSError:
            pass

    def handler(conn):
        with socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT) as upstream:
            back = threading.Thread(target=pump, args=(upstream, conn), daemon=True)
            back.start()
            pump(conn, upstream)
            back.join(CLIENT_TIMEOUT)
    return handler


class TlsServer:
    """`openssl s_server -WWW` serving `docroot` on 127.0.0.1, on a port the kernel picks."""

    def __init__(self, docroot, cert, key):
        self.process = subprocess.Popen(
            ["openssl", "s_server", "-WWW", "-accept", "127.0.0.1:0", "-cert", cert, "-key", key],
            cwd=docroot, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, errors="replace")
        deadline = time.monotonic() + 10
        self.port = None
        while self.port is None and time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            match = re.match(r"ACCEPT \S+:(\d+)$", line.strip())
            self.port = int(match.group(1)) if match else None
        if self.port is None:
            self.close()
            raise RuntimeError("openssl s_server did not start")
        # Keep draining its output so it never blocks on a full pipe.
        threading.Thread(target=self.process.stdout.read, daemon=True).start()

    def close(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def capture_client_hello():
    """The first TLS record `openssl s_client -servername localhost` sends, read by a listener."""
    captured = []

    def handler(conn):
        conn.settimeout(CLIENT_TIMEOUT)
        data = b""
        while len(data) < 5 or len(data) < 5 + int.from_bytes(data[3:5], "big"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        captured.append(data[:5 + int.from_bytes(data[3:5], "big")])

    with Listener(handler) as listener:
        subprocess.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % listener.port,
                        "-servername", "localhost"], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=CLIENT_TIMEOUT)
        deadline = time.monotonic() + 5
        while not captured and time.monotonic() < deadline:
            time.sleep(0.02)
    if not captured or captured[0][0] != 0x16:
        raise RuntimeError("no ClientHello captured from openssl s_client")
    return captured[0]


def expect_reset(conn, timeout=5.0):
    """True when the tunnel resets the connection (a clean end of stream is False)."""
    conn.settimeout(timeout)
    try:
        while conn.recv(65536):
            pass
    except (ConnectionResetError, BrokenPipeError):
        return True
    return False


def send_expecting_reset(port, payload, source=None, half_close=False, host="127.0.0.1"):
    """Connects, sends payload (then a FIN with half_close) and reports whether the tunnel reset
    the connection. The reset may come as early as the connect: a refusal by address is quick."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as client:
        try:
            if source:
                client.bind((source, 0))
            client.settimeout(5)
            client.connect((host, port))
            client.sendall(payload)
            if half_close:
                client.shutdown(socket.SHUT_WR)
        except (ConnectionResetError, BrokenPipeError):
            return True
        return expect_reset(client)
