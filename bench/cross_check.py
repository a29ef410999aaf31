"""iperf3 on loopback, no tunnel: a second opinion on the load generator's direct figures."""

import json
import os
import select
import shutil
import socket
import subprocess
import time


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _one_run(binary, seconds, extra):
    port = _free_port()
    server = subprocess.Popen([binary, "-s", "-1", "--forceflush", "-B", "127.0.0.1", "-p",
                               str(port)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              bufsize=0)
    try:
        # Wait for its banner: a probing connect would use up its one test (-1). Raw reads, so
        # that no line waits in a Python buffer while select() sees an empty pipe.
        deadline = time.monotonic() + 5
        banner = b""
        while b"listening" not in banner and time.monotonic() < deadline:
            ready, _, _ = select.select([server.stdout], [], [], 0.1)
            if ready:
                chunk = os.read(server.stdout.fileno(), 4096)
                if not chunk:
                    break
                banner += chunk
        client = subprocess.run(
            [binary, "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds), "-J", *extra],
            capture_output=True, text=True, timeout=seconds + 15, check=False)
        report = json.loads(client.stdout)
        return report["end"]["sum_received"]["bits_per_second"] / 1e9
    except (subprocess.TimeoutExpired, ValueError, KeyError) as error:
        return "failed: %s" % error
    finally:
        if server.poll() is None:
            server.terminate()
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=5)


def iperf3_direct(seconds):
    """Gbit/s that iperf3 reaches on loopback: one stream each way and 4 streams up."""
    binary = shutil.which("iperf3")
    if not binary:
        return {"error": "iperf3 not installed"}
    return {"seconds": seconds,
            "up1_gbps": _one_run(binary, seconds, []),
            "down1_gbps": _one_run(binary, seconds, ["-R"]),
            "up4_gbps": _one_run(binary, seconds, ["-P", "4"])}
