"""Child memory and pids cgroups (cgroup v1: separate hierarchies) for the container tests.

The test's cgroups are made under this process's own ones, which root may write to here; a
memory-cgroup kill of the process inside shows as exit status 137.
"""

import os
import signal
import time

CGROUP_ROOT = "/sys/fs/cgroup"


def own_cgroup_path(controller):
    """This process's cgroup in `controller`'s hierarchy, e.g. "/process_api/abc"."""
    with open("/proc/self/cgroup") as lines:
        for line in lines:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if controller in controllers.split(","):
                return path
    raise RuntimeError("no %s cgroup for this process" % controller)


class Cgroup:
    """A child memory and pids cgroup under this process's own ones, with limits."""

    def __init__(self, name, memory_bytes, pids_max):
        self.directories = {}
        try:
            for controller in ("memory", "pids"):
                directory = os.path.join(CGROUP_ROOT, controller,
                                         own_cgroup_path(controller).lstrip("/"), name)
                os.mkdir(directory)
                self.directories[controller] = directory
            self._write("memory", "memory.limit_in_bytes", memory_bytes)
            if os.path.exists(os.path.join(self.directories["memory"],
                                           "memory.memsw.limit_in_bytes")):
                self._write("memory", "memory.memsw.limit_in_bytes", memory_bytes)
            self._write("pids", "pids.max", pids_max)
        except BaseException:
            self.remove()
            raise

    def _write(self, controller, name, value):
        with open(os.path.join(self.directories[controller], name), "w") as knob:
            knob.write(str(value))

    def read(self, controller, name):
        with open(os.path.join(self.directories[controller], name)) as knob:
            return knob.read().strip()

    def join_command(self):
        """A shell prefix that moves the shell into both cgroups before it execs "$@"."""
        moves = " && ".join("echo $$ > %s/cgroup.procs" % directory
                            for directory in self.directories.values())
        return ["sh", "-c", moves + ' && exec "$@"', "sh"]

    def pids(self):
        return [int(pid) for pid in self.read("memory", "cgroup.procs").split()]

    def kill_all(self):
        """SIGKILLs every process in the cgroup and waits (bounded) until it is empty."""
        if not self.directories:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.02)

    def remove(self):
        for directory in self.directories.values():
            remove_cgroup(directory)
        self.directories = {}


def remove_cgroup(directory):
    """Kills what is left in a test cgroup and removes it and its children, deepest first."""
    if not os.path.isdir(directory):
        return
    for child in sorted((entry.path for entry in os.scandir(directory) if entry.is_dir()),
                        reverse=True):
        remove_cgroup(child)
    deadline = time.monotonic() + 10
    while True:
        with open(os.path.join(directory, "cgroup.procs")) as procs:
            pids = [int(pid) for pid in procs.read().split()]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.rmdir(directory)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
