"""The hardened tunnel: what the container runtime would do to tcptunnel, done by hand."""

import os
import shutil
import signal
import subprocess

import container_support as support


class HardenedTunnel:
    """tcptunnel in the container namespace as uid/gid 65534 with no capabilities, no new
    privileges, a read-only root (a private mount namespace, / remounted read-only, a tmpfs on
    /tmp), its own PID namespace, and the memory and pids limits of `cgroup`."""

    def __init__(self, topology, cgroup, binary, args):
        inner = ("mount -o remount,bind,ro / && "
                 "mount -t tmpfs -o size=1m,mode=1777,nosuid,nodev tmpfs /tmp && "
                 'exec "$@"')
        argv = [*cgroup.join_command(),
                *topology.command(topology.container, [
                    "unshare", "--mount", "--pid", "--fork", "--kill-child", "--propagation",
                    "private", "sh", "-c", inner, "sh",
                    "setpriv", "--reuid", support.UNPRIVILEGED,
                    "--regid", support.UNPRIVILEGED,
                    "--clear-groups", "--inh-caps=-all", "--bounding-set=-all",
                    "--no-new-privs", binary, *args])]
        self.cgroup = cgroup
        self.pid = None
        self.stderr = None
        self.process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, encoding="utf-8", errors="replace", env=support.clean_environment())
        self.ready_line = self.process.stdout.readline()
        if "Forwarding" not in self.ready_line:
            _, stderr = self.stop()
            raise RuntimeError("the hardened tunnel did not start: %r %s"
                               % (self.ready_line, stderr))
        self.pid = self._tunnel_pid()

    def _tunnel_pid(self):
        for pid in self.cgroup.pids():
            try:
                if os.path.basename(os.readlink("/proc/%d/exe" % pid)) == "tcptunnel":
                    return pid
            except OSError:
                continue
        raise RuntimeError("tcptunnel is not in its cgroup")

    def status(self):
        """/proc/PID/status of the tunnel as a dict."""
        with open("/proc/%d/status" % self.pid) as lines:
            return dict(line.rstrip("\n").split(":\t", 1) for line in lines if ":\t" in line)

    def mount_options(self, mount_point):
        with open("/proc/%d/mountinfo" % self.pid) as lines:
            for line in lines:
                fields = line.split()
                if fields[4] == mount_point:
                    return fields[5].split(",") + [fields[fields.index("-") + 1]]
        return None

    def stop(self, timeout=10):
        """Ends the tunnel with SIGTERM; returns (exit status, stderr). Safe to call again.

        If the tunnel has not ended within `timeout`, everything in its cgroup is killed: killing
        unshare alone would leave the tunnel running, because the parent-death signal that
        --kill-child sets is cleared when setpriv changes the user.
        """
        if self.stderr is not None:
            return self.process.returncode, self.stderr
        if self.process.poll() is None:
            try:
                os.kill(self.pid or self._tunnel_pid(), signal.SIGTERM)
            except (RuntimeError, ProcessLookupError):
                pass
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.cgroup.kill_all()
                self.process.kill()
                self.process.wait(timeout)
        # Whatever still holds the pipes is in the cgroup: end it so that reading cannot block.
        self.cgroup.kill_all()
        self.stderr = self.process.stderr.read()
        self.process.stdout.close()
        self.process.stderr.close()
        return self.process.returncode, self.stderr


def stage_binary(tag, binary):
    """A copy of the binary that uid 65534 can run and that a tmpfs on /tmp does not hide."""
    directory = "/var/tmp/tcptunnel-%s-bin" % tag
    os.makedirs(directory, exist_ok=True)
    os.chmod(directory, 0o755)
    staged = os.path.join(directory, "tcptunnel")
    shutil.copy(binary, staged)
    os.chmod(staged, 0o755)
    return staged
