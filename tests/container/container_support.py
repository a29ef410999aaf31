"""A "host" and a "container" on one machine, for the container tests, with no container engine.

Topology: two network namespaces that the test makes, joined by a veth pair on 192.0.2.0/24 (a
documentation range): the host at 192.0.2.1, the container at 192.0.2.2. The container's hosts file
(/etc/netns/NAME/hosts, which `ip netns exec` mounts over /etc/hosts) names the host
`host.docker.internal`, as Docker's `host-gateway` entry does.

Every namespace, link, cgroup, directory, podman store and process made here carries the run's
tag ("ct" and the test process's id, or TCPTUNNEL_CT_TAG), so that `cleanup_leftovers(tag)` can
remove whatever a killed run left behind; `cleanup_stale_runs()` does so for every tag whose
process is gone. Run as a script (`container_support.py cleanup [TAG]`) it does just that.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests", "support"))

import cgroups  # noqa: E402  (after the path set-up, like the shared helpers)

HOST_ADDRESS = "192.0.2.1"
CONTAINER_ADDRESS = "192.0.2.2"
PREFIX_LENGTH = 24
UNPRIVILEGED = "65534"
RATE_LIMIT_BODY = '{"resources":{"core":{"limit":5000,"remaining":4999,"reset":0,"used":1}}}\n'


def run_tag():
    """The tag of this run: short enough for interface names (at most 15 bytes with a suffix)."""
    return os.environ.get("TCPTUNNEL_CT_TAG") or "ct%d" % os.getpid()


def static_binary():
    """The static tcptunnel under test (TCPTUNNEL_STATIC_BIN), or None when there is none."""
    path = os.environ.get("TCPTUNNEL_STATIC_BIN", "")
    return path if path and os.access(path, os.X_OK) else None


def why_not_runnable():
    """None when the namespace tests can run here, else the reason."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, cgroups, setpriv)"
    if static_binary() is None:
        return ("no static binary: set TCPTUNNEL_STATIC_BIN (ctest builds one with "
                "-DTCPTUNNEL_STATIC=ON)")
    for tool in ("ip", "unshare", "setpriv", "openssl", "gh", "curl"):
        if shutil.which(tool) is None:
            return "%s is not installed (scripts/install-deps container)" % tool
    return None


def check_run(argv, timeout=30, **kwargs):
    """Runs a command; raises with its output when it fails."""
    completed = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)
    if completed.returncode != 0:
        raise RuntimeError("%s exited %d: %s%s" % (" ".join(argv), completed.returncode,
                                                   completed.stdout, completed.stderr))
    return completed.stdout


def clean_environment(**extra):
    """The environment for clients: no proxy settings and no machine-wide trust settings."""
    environment = {key: value for key, value in os.environ.items()
                   if key.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
                   and key not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    environment.update(extra)
    return environment


def make_pki(directory):
    """A CA and a server certificate shaped like the DIFC proxy's (see tests/support/certs.py)."""
    import certs
    return certs.make_pki(directory)


# ---------------------------------------------------------------------------------------------
# Network namespaces
# ---------------------------------------------------------------------------------------------

class Topology:
    """The host and container namespaces and the veth pair between them. A context manager."""

    def __init__(self, tag=None):
        self.tag = tag or run_tag()
        self.host = self.tag + "-host"
        self.container = self.tag + "-ctr"
        self.made = []

    def __enter__(self):
        try:
            self._make()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def _make(self):
        for namespace in (self.host, self.container):
            check_run(["ip", "netns", "add", namespace])
            self.made.append(namespace)
            check_run(["ip", "-n", namespace, "link", "set", "lo", "up"])
        host_end, container_end = self.tag + "h", self.tag + "c"
        check_run(["ip", "-n", self.host, "link", "add", host_end, "type", "veth",
                   "peer", "name", container_end, "netns", self.container])
        for namespace, link, address in ((self.host, host_end, HOST_ADDRESS),
                                         (self.container, container_end, CONTAINER_ADDRESS)):
            check_run(["ip", "-n", namespace, "addr", "add",
                       "%s/%d" % (address, PREFIX_LENGTH), "dev", link])
            check_run(["ip", "-n", namespace, "link", "set", link, "up"])

        hosts_directory = os.path.join("/etc/netns", self.container)
        os.makedirs(hosts_directory)
        with open(os.path.join(hosts_directory, "hosts"), "w") as hosts:
            hosts.write("127.0.0.1 localhost\n::1 localhost ip6-localhost\n"
                        "%s host.docker.internal\n" % HOST_ADDRESS)

    def namespace_path(self, namespace):
        return os.path.join("/run/netns", namespace)

    def command(self, namespace, argv):
        return ["ip", "netns", "exec", namespace, *argv]

    def run(self, namespace, argv, timeout=60, **kwargs):
        return subprocess.run(self.command(namespace, argv), capture_output=True, text=True,
                              timeout=timeout, **kwargs)

    def popen(self, namespace, argv, **kwargs):
        return subprocess.Popen(self.command(namespace, argv), **kwargs)

    def wait_listening(self, namespace, port, timeout=15):
        """Waits until something in `namespace` listens on TCP `port`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            listening = self.run(namespace, ["ss", "-Htln", "sport = :%d" % port], timeout=10)
            if listening.stdout.strip():
                return
            time.sleep(0.1)
        raise RuntimeError("nothing listens on port %d in %s after %ds" % (port, namespace,
                                                                           timeout))

    def close(self):
        for namespace in self.made:
            _kill_namespace_processes(namespace)
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=30)
        self.made = []
        shutil.rmtree(os.path.join("/etc/netns", self.container), ignore_errors=True)


def _kill_namespace_processes(namespace):
    listed = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True,
                            timeout=10)
    for pid in listed.stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass


# ---------------------------------------------------------------------------------------------
# Peers in the host namespace
# ---------------------------------------------------------------------------------------------

class ServerProcess:
    """A process started in a namespace and ended by its PID."""

    def __init__(self, process):
        self.process = process

    def stop(self, timeout=10):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        for stream in (self.process.stdout, self.process.stderr):
            if stream:
                stream.close()


def start_tls_server(topology, directory, pki, port):
    """`openssl s_server -WWW` in the host namespace serving a fake GitHub API from `directory`.

    `GET /api/v3/rate_limit` (what `gh api rate_limit` sends to a GitHub Enterprise host) answers
    RATE_LIMIT_BODY.
    """
    api = os.path.join(directory, "www", "api", "v3")
    os.makedirs(api, exist_ok=True)
    with open(os.path.join(api, "rate_limit"), "w") as body:
        body.write(RATE_LIMIT_BODY)
    process = topology.popen(
        topology.host,
        ["openssl", "s_server", "-quiet", "-WWW", "-accept", str(port),
         "-cert", pki.server_cert, "-key", pki.server_key],
        cwd=os.path.join(directory, "www"), stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = ServerProcess(process)
    try:
        topology.wait_listening(topology.host, port)
    except BaseException:
        server.stop()
        raise
    return server


def start_echo_server(topology, port):
    """The echo server of load_peers.py in the host namespace."""
    process = topology.popen(
        topology.host, [sys.executable, os.path.join(HERE, "load_peers.py"), "serve", str(port)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    server = ServerProcess(process)
    if process.stdout.readline().strip() != "listening":
        server.stop()
        raise RuntimeError("the echo server did not start")
    return server


def gh_rate_limit(topology, directory, ca_cert, host="localhost:18443"):
    """`gh api rate_limit` from the container namespace; returns the CompletedProcess."""
    home = tempfile.mkdtemp(prefix="gh-home-", dir=directory)
    environment = clean_environment(
        GH_HOST=host, GH_ENTERPRISE_TOKEN="x", SSL_CERT_FILE=ca_cert, HOME=home,
        GH_CONFIG_DIR=os.path.join(home, "gh"), GH_NO_UPDATE_NOTIFIER="1", GH_PROMPT_DISABLED="1")
    environment.pop("GH_TOKEN", None)
    environment.pop("GITHUB_TOKEN", None)
    return topology.run(topology.container, ["gh", "api", "rate_limit"], timeout=60,
                        env=environment)


def curl_rate_limit(topology, ca_cert, url="https://localhost:18443/api/v3/rate_limit"):
    """curl from the container namespace; returns the CompletedProcess."""
    return topology.run(topology.container,
                        ["curl", "-sS", "--max-time", "20", "--cacert", ca_cert, url],
                        timeout=60, env=clean_environment())


class ConcurrentClients:
    """load_peers.py connect in the container namespace: COUNT connections held open at once."""

    def __init__(self, topology, address, count, timeout=90):
        self.process = topology.popen(
            topology.container,
            [sys.executable, os.path.join(HERE, "load_peers.py"), "connect", address,
             str(count), str(timeout)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def wait_held(self):
        """Blocks until all are connected and echoed; returns {"held": N, "errors": [...]}."""
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the load client ended early: " + self.process.stderr.read())
        return json.loads(line)

    def release(self):
        if self.process.poll() is None:
            try:
                self.process.stdin.write("\n")
                self.process.stdin.flush()
                self.process.wait(30)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait(10)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            stream.close()


# ---------------------------------------------------------------------------------------------
# Leftovers of a killed run
# ---------------------------------------------------------------------------------------------

def cleanup_leftovers(tag):
    """Removes every container, namespace, hosts directory, cgroup, podman store and staged
    binary of `tag`."""
    podman_root = "/var/tmp/tcptunnel-%s-podman" % tag
    if os.path.isdir(podman_root) and shutil.which("podman"):
        subprocess.run(podman_command(tag) + ["rm", "--all", "--force", "--time", "0"],
                       capture_output=True, timeout=60)

    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    for line in listed.stdout.splitlines():
        namespace = line.split()[0] if line.split() else ""
        if namespace.startswith(tag + "-"):
            _kill_namespace_processes(namespace)
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=30)
            shutil.rmtree(os.path.join("/etc/netns", namespace), ignore_errors=True)

    for controller in os.listdir(cgroups.CGROUP_ROOT):
        top = os.path.join(cgroups.CGROUP_ROOT, controller)
        candidates = [os.path.join(top, "tcptunnel-%s-podman" % tag)]
        try:
            own = os.path.join(top, cgroups.own_cgroup_path(controller).lstrip("/"))
            candidates += [entry.path for entry in os.scandir(own)
                           if entry.is_dir() and entry.name.startswith("tcptunnel-%s-" % tag)]
        except (RuntimeError, OSError):
            pass
        for directory in candidates:
            try:
                cgroups.remove_cgroup(directory)
            except OSError:
                pass

    # podman mounts a tmpfs (shm) inside its store for each container; a store whose containers
    # were not removed cleanly still has them.
    _unmount_below(podman_root)
    shutil.rmtree(podman_root, ignore_errors=True)
    shutil.rmtree("/var/tmp/tcptunnel-%s-bin" % tag, ignore_errors=True)


def _unmount_below(directory):
    with open("/proc/self/mountinfo") as lines:
        mount_points = [line.split()[4] for line in lines]
    for mount_point in sorted((point for point in mount_points
                               if point.startswith(directory + "/")), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", mount_point], capture_output=True, timeout=10)


def cleanup_stale_runs():
    """Runs cleanup_leftovers for every "ct<pid>" tag whose process no longer exists."""
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                           timeout=10).stdout.split()
    names += os.listdir("/var/tmp")
    for controller in ("memory", "pids"):
        try:
            names += os.listdir(os.path.join(cgroups.CGROUP_ROOT, controller,
                                             cgroups.own_cgroup_path(controller).lstrip("/")))
        except (RuntimeError, OSError):
            pass
    tags = {match.group(1) for match in
            (re.match(r"(?:tcptunnel-)?(ct(\d+))-", name) for name in names) if match}
    for tag in sorted(tags):
        if not _process_alive(int(tag[2:])):
            cleanup_leftovers(tag)


def _process_alive(pid):
    """True for a running process; a zombie (killed, not yet reaped) counts as gone."""
    try:
        with open("/proc/%d/stat" % pid) as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def podman_command(tag):
    """podman with a store of this run only: vfs storage, runc, cgroupfs, no systemd."""
    root = "/var/tmp/tcptunnel-%s-podman" % tag
    return ["podman", "--root", os.path.join(root, "storage"), "--runroot",
            os.path.join(root, "run"), "--tmpdir", os.path.join(root, "tmp"),
            "--storage-driver", "vfs", "--runtime", "runc", "--cgroup-manager", "cgroupfs",
            "--events-backend", "file"]


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "cleanup":
        cleanup_leftovers(sys.argv[2])
    elif len(sys.argv) == 2 and sys.argv[1] == "cleanup":
        cleanup_stale_runs()
    else:
        sys.exit("usage: container_support.py cleanup [TAG]")
