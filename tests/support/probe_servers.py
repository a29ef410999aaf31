"""Loopback servers that give `tcptunnel probe` each of its diagnosis words.

Every server binds 127.0.0.1 on a port the kernel picks, and is ended by the test that started it
(use them as context managers). Certificates come from certs.py.
"""

import os
import re
import select
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

_IO_TIMEOUT = 10.0


class TlsServer:
    """A TLS server (Python's ssl) that counts completed and failed handshakes.

    After a handshake it reads until the client's close_notify and answers with its own; any
    other end of the session (a reset, an EOF without close_notify) is recorded in
    `session_errors`. With listen=False the port is bound but refuses connections until
    listen() is called.
    """

    def __init__(self, cert, key, listen=True, client_ca=None):
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        if client_ca is not None:
            self.context.verify_mode = ssl.CERT_REQUIRED
            self.context.load_verify_locations(client_ca)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.completed = 0
        self.failed = 0
        self.handshake_errors = []
        self.session_errors = []
        self._lock = threading.Lock()
        self._stopped = False
        self._thread = None
        if listen:
            self.listen()

    def listen(self):
        self.sock.listen(64)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, raw):
        raw.settimeout(_IO_TIMEOUT)
        try:
            conn = self.context.wrap_socket(raw, server_side=True, suppress_ragged_eofs=False)
        except (ssl.SSLError, OSError) as error:
            with self._lock:
                self.failed += 1
                self.handshake_errors.append(repr(error))
            raw.close()
            return
        with self._lock:
            self.completed += 1
        try:
            while conn.recv(65536):
                pass
            conn.unwrap().close()
        except (ssl.SSLError, OSError) as error:
            with self._lock:
                self.session_errors.append(repr(error))
            conn.close()

    def wait_for_sessions(self, count, timeout=10.0):
        """Waits until `count` handshakes have completed or failed; returns the number seen."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                seen = self.completed + self.failed
            if seen >= count:
                return seen
            time.sleep(0.02)
        with self._lock:
            return self.completed + self.failed

    def close(self):
        self._stopped = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class HttpsServer:
    """Python's file server over TLS: 200 for a file under `directory`, 404 for anything else."""

    def __init__(self, directory, cert, key):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=directory, **kwargs)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class OpensslWwwServer:
    """`openssl s_server -WWW` serving files from `directory` (the fake DIFC proxy's shape)."""

    def __init__(self, directory, cert, key, ready_timeout=10.0):
        self.process = subprocess.Popen(
            ["openssl", "s_server", "-accept", "127.0.0.1:0", "-cert", cert, "-key", key, "-WWW"],
            cwd=directory, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
        self.lines = []
        deadline = time.monotonic() + ready_timeout
        self.port = None
        while self.port is None and time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            self.lines.append(line.rstrip("\n"))
            match = re.match(r"ACCEPT 127\.0\.0\.1:(\d+)", line)
            if match:
                self.port = int(match.group(1))
        if self.port is None:
            self.process.kill()
            self.process.wait()
            self.process.stdout.close()
            raise RuntimeError("openssl s_server did not start: %s" % self.lines)
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self):
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def close(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(5)
        self.process.stdout.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def realtime_priority_allowed():
    """Whether a thread of this process may take real-time priority (LateClientRelay needs it)."""
    allowed = []

    def try_it():
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
            allowed.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=try_it)
    thread.start()
    thread.join()
    return bool(allowed)


class LateClientRelay:
    """Carries one client's TLS session to a server on loopback and makes the client late after
    its side of the handshake, the way a loaded machine does, but every time.

    When the client's last handshake flight arrives, the relay stops the client process
    (SIGSTOP; the relay thread runs at real-time priority on the client's CPU, so the client gets
    no further turn first), hands the flight to the server, passes on all the server answers
    until it closes, and resets the client's connection; only then does it resume the client
    (SIGCONT). Whatever the client does next meets a reset connection with the server's answer
    still queued to be read. Needs realtime_priority_allowed().
    """

    def __init__(self, server_port, cpu=0):
        self.server_port = server_port
        self.cpu = cpu
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.sock.settimeout(_IO_TIMEOUT)
        self.port = self.sock.getsockname()[1]
        self.client_stopped = False
        self.error = None
        self._client_pid = None
        self._client_known = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def attach(self, process):
        """Puts `process` (a Popen: the client) on the relay's CPU and lets the relay go on."""
        os.sched_setaffinity(process.pid, {self.cpu})
        self._client_pid = process.pid
        self._client_known.set()

    def _serve(self):
        try:
            os.sched_setaffinity(0, {self.cpu})
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
            client, _ = self.sock.accept()
            with client, socket.create_connection(("127.0.0.1", self.server_port),
                                                  timeout=_IO_TIMEOUT) as server:
                self._relay(client, server)
        except Exception as error:  # reported by the test through self.error
            self.error = repr(error)
        finally:
            if self.client_stopped:
                os.kill(self._client_pid, signal.SIGCONT)

    def _relay(self, client, server):
        if not self._client_known.wait(_IO_TIMEOUT):
            raise RuntimeError("no client process attached")
        server.sendall(client.recv(65536))

        # The server's flight goes to the client until the client answers with its last one.
        while True:
            readable, _, _ = select.select([client, server], [], [], _IO_TIMEOUT)
            if not readable:
                raise TimeoutError("the handshake stalled")
            if client in readable:
                break
            flight = server.recv(65536)
            if not flight:
                raise RuntimeError("the server closed during the handshake")
            client.sendall(flight)

        os.kill(self._client_pid, signal.SIGSTOP)
        self.client_stopped = True
        server.sendall(client.recv(65536))
        answer = b""
        try:
            while chunk := server.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
        client.sendall(answer)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def close(self):
        self._thread.join(_IO_TIMEOUT)
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# Handlers for tunnel_harness.Listener, which closes the connection when the handler returns.

def silent_handler(conn):
    """Accepts and never answers: reads until the client gives up and closes."""
    conn.settimeout(_IO_TIMEOUT)
    try:
        while conn.recv(65536):
            pass
    except OSError:
        pass


def reset_handler(conn):
    """Resets the connection as soon as it is accepted (SO_LINGER with a zero timeout)."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


PLAIN_HTTP_ANSWER = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n"
                     b"Content-Length: 11\r\nConnection: close\r\n\r\nBad Request")


def plain_http_handler(conn):
    """A plain HTTP server's answer to bytes it cannot parse: 400, then an orderly close."""
    conn.settimeout(_IO_TIMEOUT)
    conn.recv(65536)
    conn.sendall(PLAIN_HTTP_ANSWER)
    conn.shutdown(socket.SHUT_WR)
    try:
        while conn.recv(65536):
            pass
    except OSError:
        pass


def file_with(directory, relative_path, content):
    """Writes `content` (bytes) at `relative_path` under `directory`, making parent folders."""
    path = os.path.join(directory, relative_path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as out:
        out.write(content)
    return path


class DnsResponder:
    """A DNS server on a loopback address, port 53, that answers every query with one rcode
    (3: NXDOMAIN, 2: SERVFAIL) and records the names asked. Use with run_with_resolver(), so
    that no lookup ever leaves loopback. Binding port 53 needs root."""

    def __init__(self, rcode, address="127.0.53.53"):
        self.rcode = rcode
        self.address = address
        self.names = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, 53))
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while True:
            try:
                query, client = self.sock.recvfrom(512)
            except OSError:
                return
            if not query:
                return
            if len(query) < 12:
                continue
            labels, offset = [], 12
            while offset < len(query) and query[offset] != 0:
                length = query[offset]
                labels.append(query[offset + 1:offset + 1 + length].decode("ascii", "replace"))
                offset += 1 + length
            question = query[12:offset + 5]
            self.names.append(".".join(labels))
            flags = 0x8000 | (query[2] & 0x01) << 8 | 0x0080 | self.rcode
            header = query[:2] + struct.pack("!HHHHH", flags, 1, 0, 0, 0)
            self.sock.sendto(header + question, client)

    def resolv_conf(self, directory):
        """Writes a resolv.conf that names only this server; returns its path."""
        path = os.path.join(directory, "resolv-%s.conf" % self.address)
        with open(path, "w") as out:
            out.write("nameserver %s\noptions timeout:2 attempts:1\n" % self.address)
        return path

    def close(self):
        # shutdown() wakes the thread blocked in recvfrom(); only then is the port released.
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._thread.join(5)
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def run_with_resolver(resolv_conf, command, timeout=20):
    """Runs `command` in a private mount namespace whose /etc/resolv.conf is `resolv_conf`."""
    wrapped = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
               'mount --bind "$0" /etc/resolv.conf && exec "$@"', resolv_conf, *command]
    return subprocess.run(wrapped, capture_output=True, text=True, timeout=timeout)
