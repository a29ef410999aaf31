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


def with_variant_options(args):
    """args plus the options in TCPTUNNEL_TEST_OPTIONS ("--splice always", "--threads 2"), with
    which ctest runs some test files a second time; an option the test gives itself wins, and the
    positional form (which takes no options) is left alone."""
    extra = os.environ.get("TCPTUNNEL_TEST_OPTIONS", "").split()
    if not extra or not args or not args[0].startswith("--"):
        return args
    for option, value in zip(extra[0::2], extra[1::2]):
        if option not in args:
            args = [*args, option, value]
    return args


class Tunnel:
    """One tcptunnel process. Use as a context manager; stop() returns (exit status, stderr).

    Its stderr is read by the harness (see stderr()) unless `stderr` names a descriptor of the
    test's own to write it to instead."""

    def __init__(self, *args, env=None, ready_timeout=5.0, expect_ready=True, prefix=(),
                 stderr=subprocess.PIPE):
        self.args = [*map(str, prefix), BINARY, *with_variant_options([str(a) for a in args])]
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.process = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stderr=stderr, env=full_env,
            text=True, encoding="utf-8", errors="replace")
        self.ready_lines = []
        self._stderr_chunks = []
        self._stderr_thread = threading.Thread(target=self._drain_stderr, daemon=True)
        self._stderr_thread.start()
        if expect_ready:
            self._wait_ready(ready_timeout)

    def _drain_stderr(self):
        for line in self.process.stderr or ():
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
        for stream in (self.process.stdout, self.process.stderr):
            if stream:
                stream.close()
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


def connect(port, host="127.0.0.1", timeout=5.0, family=None):
    """A client connected to host:port; IPv6 when the host has a colon."""
    if family is None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
    client = socket.socket(family, socket.SOCK_STREAM)
    client.settimeout(timeout)
    try:
        client.connect((host, port))
    except OSError:
        client.close()
        raise
    return client


def exchange(client, payload, timeout=None):
    """Sends payload and reads back as many bytes (the upstream echoes); fewer at an early EOF."""
    if timeout is not None:
        client.settimeout(timeout)
    client.sendall(payload)
    received = b""
    while len(received) < len(payload):
        data = client.recv(65536)
        if not data:
            break
        received += data
    return received


def read_exactly(conn, count, timeout=10.0):
    """Reads `count` bytes, or fewer at an early EOF."""
    conn.settimeout(timeout)
    received = b""
    while len(received) < count:
        data = conn.recv(min(65536, count - len(received)))
        if not data:
            break
        received += data
    return received


def recv_all(conn, timeout=10.0):
    """Reads until EOF; returns the bytes. Raises ConnectionResetError on a reset."""
    conn.settimeout(timeout)
    chunks = []
    while True:
        data = conn.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


# ---------------------------------------------------------------------------
# Fault, limit and soak tests: wrapped commands, /proc readings, log fields, network namespaces.
# ---------------------------------------------------------------------------

class CommandTunnel(Tunnel):
    """A Tunnel started through wrapper commands that exec the binary (prlimit, unshare,
    ip netns exec, sh -c '... exec "$@"'), so that .pid is still the tunnel's own process."""

    def __init__(self, prefix, *args, env=None, ready_timeout=5.0, expect_ready=True):
        super().__init__(*args, env=env, ready_timeout=ready_timeout, expect_ready=expect_ready,
                         prefix=prefix)


def private_resolver_prefix(directory, hosts_text):
    """A command prefix that runs the next command in its own mount namespace where
    /etc/hosts is `directory`/hosts (written from hosts_text; rewrite that file in place to
    change it under a running tunnel) and name lookups use that file only: no DNS query
    leaves the machine. Returns (prefix, hosts_path)."""
    hosts_path = os.path.join(directory, "hosts")
    nsswitch_path = os.path.join(directory, "nsswitch.conf")
    with open(hosts_path, "w", encoding="ascii") as hosts:
        hosts.write(hosts_text)
    with open(nsswitch_path, "w", encoding="ascii") as nsswitch:
        nsswitch.write("hosts: files\n")
    script = ('mount --bind "$1" /etc/hosts && mount --bind "$2" /etc/nsswitch.conf && '
              'shift 2 && exec "$@"')
    prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
              hosts_path, nsswitch_path]
    return prefix, hosts_path


def process_cpu_seconds(pid):
    """User plus system CPU time of a process (all its threads), from /proc/PID/stat."""
    with open("/proc/%d/stat" % pid, encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    # After the command name: state is field 3, utime field 14 and stime field 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_rss_kib(pid):
    """Resident set size of a process in KiB, from /proc/PID/status."""
    with open("/proc/%d/status" % pid, encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS for pid %d" % pid)


def process_fd_count(pid):
    """Open file descriptors of a process."""
    return len(os.listdir("/proc/%d/fd" % pid))


LOG_FIELD_PATTERN = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def log_fields(line):
    """The key=value fields of a text log line as a dict (quotes around values removed)."""
    fields = {}
    for key, value in LOG_FIELD_PATTERN.findall(line):
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            value = value[1:-1]
        fields[key] = value
    return fields


def wait_for_lines(tunnel, event, count, timeout=5.0):
    """Waits until the tunnel has logged at least `count` lines of `event`; returns them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = tunnel.log_lines(event)
        if len(lines) >= count:
            return lines
        time.sleep(0.02)
    return tunnel.log_lines(event)


def request_stats(tunnel, timeout=5.0):
    """Sends SIGUSR1 and returns the fields of the `stats when=signal` line it produced."""
    before = len([line for line in tunnel.log_lines("stats") if "when=signal" in line])
    tunnel.signal(signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = [line for line in tunnel.log_lines("stats") if "when=signal" in line]
        if len(lines) > before:
            return log_fields(lines[before])
        time.sleep(0.02)
    raise AssertionError("no stats line within %.1fs of SIGUSR1" % timeout)


class NetNamespace:
    """A network namespace made for one test (`ip netns add`) and deleted by close(), with its
    loopback up. call() runs Python code inside it: sockets made there belong to it."""

    CLONE_NEWNET = 0x40000000

    def __init__(self, name):
        self.name = name
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        try:
            self.ip("link", "set", "lo", "up")
        except Exception:
            self.close()
            raise

    def ip(self, *args):
        """Runs `ip -n NAME ARGS...`; raises with ip's message on failure."""
        result = subprocess.run(["ip", "-n", self.name, *map(str, args)], capture_output=True,
                                text=True)
        if result.returncode != 0:
            raise RuntimeError("ip -n %s %s: %s" % (self.name, " ".join(map(str, args)),
                                                    result.stderr.strip()))

    def sysctl(self, key, value):
        subprocess.run(["ip", "netns", "exec", self.name, "sysctl", "-qw",
                        "%s=%s" % (key, value)], check=True, capture_output=True)

    def exec_prefix(self):
        """A command prefix that runs the next command inside the namespace."""
        return ["ip", "netns", "exec", self.name]

    def call(self, function, *args):
        """Runs function(*args) on a thread that joined the namespace; returns its result."""
        import ctypes
        outcome = {}

        def run():
            libc = ctypes.CDLL(None, use_errno=True)
            descriptor = os.open("/var/run/netns/" + self.name, os.O_RDONLY)
            try:
                if libc.setns(descriptor, self.CLONE_NEWNET) != 0:
                    outcome["error"] = OSError(ctypes.get_errno(), "setns " + self.name)
                    return
            finally:
                os.close(descriptor)
            try:
                outcome["value"] = function(*args)
            except BaseException as error:  # handed back to the caller's thread
                outcome["error"] = error

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]

    def close(self):
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
