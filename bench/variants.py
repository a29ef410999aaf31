"""The tunnels under test, and how to start each one on 127.0.0.1.

A variant is a name, a table label and a function from (listen port, upstream port, temp dir) to a
command line; `direct` has none (the load generator talks to its own server). tcptunnel's variants
depend on the options its --help lists, so new options become new rows here in one line each.
"""

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Callable, Optional

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))


@dataclass
class Variant:
    key: str
    label: str
    argv: Optional[Callable[[int, int, str], list]] = None
    version: str = ""
    default: bool = True  # run unless --variants names the set
    quick: bool = True  # also run by --quick (the CI smoke test keeps to the main rows)
    forks: bool = False  # a child process per connection: wait for them before reading CPU
    notes: list = field(default_factory=list)


def _first_line(command):
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else ""


def _tcptunnel_variants(binary, suffix, label_suffix):
    """tcptunnel as shipped, plus one row for each data-path option its --help offers."""
    help_text = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=10,
                               check=False).stdout
    version = _first_line([binary, "--version"])

    def make(extra):
        def argv(port, upstream, _temp):
            return [binary, "--listen", "127.0.0.1:%d" % port, "--to",
                    "127.0.0.1:%d" % upstream, *extra]
        return argv

    rows = [Variant("tcptunnel" + suffix, "tcptunnel" + label_suffix, make([]), version)]
    if "--splice" in help_text:
        for mode in ("never", "always"):
            rows.append(Variant("tcptunnel%s-splice-%s" % (suffix, mode),
                                "tcptunnel%s --splice %s" % (label_suffix, mode),
                                make(["--splice", mode]), version, quick=False))
    if "--threads" in help_text:
        rows.append(Variant("tcptunnel%s-threads-2" % suffix,
                            "tcptunnel%s --threads 2" % label_suffix,
                            make(["--threads", "2"]), version, default=False))
    if "--log-level" in help_text:
        rows.append(Variant("tcptunnel%s-log-warn" % suffix,
                            "tcptunnel%s --log-level warn" % label_suffix,
                            make(["--log-level", "warn"]), version, default=False))
    return rows


def _haproxy(binary):
    with open(os.path.join(BENCH_DIR, "haproxy.cfg.in"), encoding="utf-8") as template_file:
        template = template_file.read()

    def argv(port, upstream, temp):
        path = os.path.join(temp, "haproxy-%d.cfg" % port)
        with open(path, "w", encoding="utf-8") as config:
            config.write(template.replace("@LISTEN_PORT@", str(port))
                         .replace("@UPSTREAM_PORT@", str(upstream)))
        return [binary, "-db", "-f", path]
    return Variant("haproxy", "HAProxy (splice, 1 thread)", argv, _first_line([binary, "-v"]))


def _socat(binary, backlog=None):
    listen_options = "fork,reuseaddr" + (",backlog=%d" % backlog if backlog else "")

    def argv(port, upstream, _temp):
        return [binary, "TCP-LISTEN:%d,bind=127.0.0.1,%s" % (port, listen_options),
                "TCP:127.0.0.1:%d" % upstream]
    version = " ".join(_first_line([binary, "-V"]).split()[:4])
    if backlog:
        return Variant("socat-backlog", "socat (fork, backlog %d)" % backlog, argv, version,
                       default=False, forks=True)
    return Variant("socat", "socat (fork)", argv, version, forks=True)


def _node(binary):
    script = os.path.join(BENCH_DIR, "node_baseline.js")

    def argv(port, upstream, _temp):
        return [binary, script, str(port), "127.0.0.1", str(upstream), "127.0.0.1"]
    return Variant("node", "Node.js baseline", argv, "node " + _first_line([binary, "--version"]))


def discover(tcptunnel, tcptunnel_io_uring=None, tcptunnel_static=None):
    """Every variant whose program is present, in table order; the missing ones as (key, why)."""
    rows = [Variant("direct", "direct (no tunnel)")]
    missing = []
    rows += _tcptunnel_variants(tcptunnel, "", "")
    if tcptunnel_static:
        rows += [row for row in _tcptunnel_variants(tcptunnel_static, "-static", " static")
                 if row.key == "tcptunnel-static"]
    if tcptunnel_io_uring:
        rows += [row for row in _tcptunnel_variants(tcptunnel_io_uring, "-io-uring", " io_uring")
                 if row.key == "tcptunnel-io-uring"]
    for key, maker in (("haproxy", _haproxy), ("socat", _socat), ("nodejs", _node)):
        binary = shutil.which("node" if key == "nodejs" else key)
        if binary:
            rows.append(maker(binary))
            if key == "socat":
                # socat's default listen backlog is 5: under churn, SYNs overflow it.
                rows.append(_socat(binary, backlog=4096))
        else:
            missing.append((key, "not installed"))
    return rows, missing
