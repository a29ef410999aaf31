"""podman for the image tests: a store of the run's own, no registry, containers in test namespaces.

Each run keeps its images and containers in /var/tmp/tcptunnel-TAG-podman (vfs storage, runc,
cgroupfs with the cgroup parent /tcptunnel-TAG-podman), so that nothing is shared with another run
and container_support.cleanup_leftovers(TAG) removes all of it.

A container started here joins a network namespace that the test made (`--network ns:PATH`):
no bridge, no firewall chains, nothing left behind, as with `--network host`; but unlike host
networking, `podman exec` and `podman healthcheck run` join that namespace too (with host
networking they would run in the namespace of whoever calls podman, here the machine's own).
"""

import os
import shutil
import subprocess
import tarfile
import time

import container_support as support

# The hardening the firewall applies to the relay container.
FIREWALL_FLAGS = ["--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--read-only",
                  "--memory", "64m", "--pids-limit", "20", "--user", "65534"]
# podman on this host needs the limits spelled out (PLATFORM.md). The descriptor limit is raised
# from 1024 because 1000 relayed connections hold 2000 sockets; Docker's default is far higher.
ULIMIT_FLAGS = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=1024:1024"]


def why_not_runnable(extra_tools=()):
    """None when podman can build and run the images here, else the reason."""
    reason = support.why_not_runnable()
    if reason:
        return reason
    for tool in ("podman", "runc", *extra_tools):
        if shutil.which(tool) is None:
            return "%s is not installed (scripts/install-deps container)" % tool
    if not os.path.isdir("/sys/fs/cgroup/memory"):
        return "no cgroup v1 memory controller (the test reads the container's memory peak)"
    return None


class Podman:
    def __init__(self, tag):
        self.tag = tag
        self.root = "/var/tmp/tcptunnel-%s-podman" % tag
        self.base = support.podman_command(tag)

    def run(self, args, timeout=120, check=True, **kwargs):
        argv = self.base + list(args)
        completed = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                   **kwargs)
        if check and completed.returncode != 0:
            raise RuntimeError("podman %s exited %d: %s" % (" ".join(args), completed.returncode,
                                                            completed.stderr[-2000:]))
        return completed

    def import_binary(self, binary):
        """An image holding only /out/tcptunnel, made from a tarball: what the build stage
        would produce, without the build stage's base image (which could not be pulled)."""
        image = "localhost/tcptunnel-binary:%s" % self.tag
        staging = os.path.join(self.root, "binary.tar")
        os.makedirs(self.root, exist_ok=True)
        with tarfile.open(staging, "w") as archive:
            entry = archive.gettarinfo(binary, arcname="out/tcptunnel")
            entry.uid = entry.gid = 0
            entry.uname = entry.gname = ""
            entry.mode = 0o755
            with open(binary, "rb") as content:
                archive.addfile(entry, content)
        self.run(["import", staging, image])
        os.remove(staging)
        return image

    def import_busybox_base(self):
        """A stand-in for the cli-proxy's base image (which could not be pulled): Debian's
        static busybox as /bin/sh and the few tools the entrypoint uses, and a /tmp."""
        image = "localhost/busybox-base:%s" % self.tag
        staging = os.path.join(self.root, "busybox.tar")
        os.makedirs(self.root, exist_ok=True)
        with tarfile.open(staging, "w") as archive:
            for directory, mode in (("bin", 0o755), ("etc", 0o755), ("tmp", 0o1777),
                                    ("usr", 0o755), ("usr/local", 0o755),
                                    ("usr/local/bin", 0o755)):
                entry = tarfile.TarInfo(directory)
                entry.type, entry.mode = tarfile.DIRTYPE, mode
                archive.addfile(entry)
            busybox = shutil.which("busybox")
            entry = archive.gettarinfo(busybox, arcname="bin/busybox")
            entry.uid = entry.gid = 0
            entry.uname = entry.gname = ""
            with open(busybox, "rb") as content:
                archive.addfile(entry, content)
            for applet in ("sh", "cat", "cp", "sleep"):
                entry = tarfile.TarInfo("bin/" + applet)
                entry.type, entry.linkname = tarfile.SYMTYPE, "busybox"
                archive.addfile(entry)
        self.run(["import", "--change", "ENV PATH=/usr/local/bin:/bin", staging, image])
        os.remove(staging)
        return image

    def build(self, dockerfile, image, build_args, target=None):
        """`podman build` of `dockerfile` with the repository as context; never pulls. Docker's
        image format, since the OCI format has no HEALTHCHECK."""
        args = ["build", "--format", "docker", "--pull=never", "-f", dockerfile, "-t", image]
        if target:
            args += ["--target", target]
        for name, value in build_args.items():
            args += ["--build-arg", "%s=%s" % (name, value)]
        started = time.monotonic()
        self.run(args + [support.REPO], timeout=300)
        return time.monotonic() - started

    def image_size(self, image):
        return int(self.run(["image", "inspect", "--format", "{{.Size}}", image]).stdout)

    def image_config(self, image, field):
        return self.run(["image", "inspect", "--format", "{{json .Config.%s}}" % field,
                         image]).stdout.strip()

    def start(self, name, image, network_namespace, run_flags, command=()):
        """Starts a detached container; health checks run only when the test asks."""
        self.run(["run", "--detach", "--name", name, "--network", "ns:" + network_namespace,
                  "--cgroup-parent", "/tcptunnel-%s-podman" % self.tag,
                  "--health-interval", "disable", *run_flags, image, *command])
        self.wait_running(name)

    def wait_running(self, name, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.inspect(name, "{{.State.Status}}") == "running":
                return
            time.sleep(0.1)
        raise RuntimeError("container %s is not running: %s" % (name, self.logs(name)))

    def inspect(self, name, template):
        return self.run(["inspect", "--format", template, name]).stdout.strip()

    def logs(self, name):
        completed = self.run(["logs", name], check=False)
        return completed.stdout + completed.stderr

    def healthcheck(self, name):
        """`podman healthcheck run`: exit status 0 healthy, 1 unhealthy."""
        return self.run(["healthcheck", "run", name], check=False, timeout=60)

    def health_status(self, name):
        return self.inspect(name, "{{.State.Health.Status}}")

    def cgroup_file(self, name, controller, knob):
        path = self.inspect(name, "{{.State.CgroupPath}}").lstrip("/")
        with open(os.path.join("/sys/fs/cgroup", controller, path, knob)) as value:
            return value.read().strip()

    def process_status(self, name):
        """/proc/PID/status of the container's first process, as a dict."""
        pid = self.inspect(name, "{{.State.Pid}}")
        with open("/proc/%s/status" % pid) as lines:
            return dict(line.rstrip("\n").split(":\t", 1) for line in lines if ":\t" in line)

    def remove(self, name):
        self.run(["rm", "--force", "--time", "2", name], check=False)
