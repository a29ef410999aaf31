"""Starts the built tcptunnel binary and real loopback peers for the integration and e2e tests.

Every process and socket here lives on loopback and is ended by the PID this module started.
"""

import os
import re
import signal
import socket
import subprocess
import threading
import time

BINARY = os.environ.get("TCPTUNNEL_BIN", os.path.join(os.getcwd(), "build", "tcptunnel"))
READY_PATTERN = re.compile(r"Forwarding (\S+) \u2192 (\S+)")


class Tunnel:
    """One tcptunnel process. Use as a context manager; stop() returns (exit status, stderr)."""

    def __init__(self, *args, env=None, ready_timeout=5.0, expect_ready=True):
        self.args = [BINARY, *map(str, args)]
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.process = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full_env,
            text=True, encoding="utf-8", errors="replace")
        self.ready_lines = []
        self._stderr_chunks = []
        self._stderr_thread = threading.Thread(target=self._drain_stderr, daemon=True)
        self._stderr_thread.start()
        if expect_ready:
            self._wait_ready(ready_timeout)

    def _drain_stderr(self):
        for line in self.process.stderr:
            self._stderr_chunks.append(line)

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError("tunnel exited before its ready line: " + self.stderr())
            self.ready_lines.append(line.rstrip("\n"))
            if READY_PATTERN.search(line):
                return
        raise RuntimeError("no ready line within %.1fs" % timeout)

    @property
    def pid(self):
        return self.process.pid

    @property
    def port(self):
        """The port of the first ready line's listen address."""
        listen = READY_PATTERN.search(self.ready_lines[-1]).group(1)
        return int(listen.rsplit(":", 1)[1])

    def stderr(self):
        return "".join(self._stderr_chunks)

    def log_lines(self, event=None):
        lines = self.stderr().splitlines()
        if event is None:
            return lines
        return [line for line in lines if (" %s " % event) in line or ("\"%s\"" % event) in line]

    def wait_for_log(self, needle, timeout=5.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.stderr():
                return True
            time.sleep(0.02)
        return False

    def signal(self, number=signal.SIGTERM):
        self.process.send_signal(number)

    def stop(self, timeout=5.0):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._stderr_thread.join(2)
        return self.process.returncode, self.stderr()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def run_binary(*args, env=None, timeout=10):
    """Runs tcptunnel to completion; returns CompletedProcess with text stdout/stderr."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([BINARY, *map(str, args)], capture_output=True, text=True,
                          env=full_env, timeout=timeout)


def free_port(family=socket.AF_INET, host="127.0.0.1"):
    """A port that was free a moment ago (for servers that cannot report their own port)."""
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class Listener:
    """A loopback TCP server running `handler(conn)` in a thread per connection."""

    def __init__(self, handler, host="127.0.0.1", family=socket.AF_INET, backlog=128):
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(backlog)
        self.port = self.sock.getsockname()[1]
        self.handler = handler
        self.accepted = 0
        self.errors = []
        self._stopped = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn):
        try:
            self.handler(conn)
        except Exception as error:  # recorded for the test to assert on
            self.errors.append(error)
        finally:
            conn.close()

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


def echo_handler(conn):
    """Echoes until the client's FIN, then half-closes."""
    while True:
        data = conn.recv(65536)
        if not data:
            break
        conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)


def recv_all(conn, timeout=10.0):
    """Reads until EOF; returns the bytes. Raises ConnectionResetError on a reset."""
    conn.settimeout(timeout)
    chunks = []
    while True:
        data = conn.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)
