"""Allocation-free steady state: once a connection is relaying, moving more bytes costs no more
calls to the allocator. A small preloaded library (tests/support/count_allocations.c, built
here with the system's C compiler) counts them; the same exchange is run with a small and a
sixteen times larger payload, and the two counts must agree but for a small constant.

Every peer is a loopback socket of this process.
"""

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import unittest

from tunnel_harness import Listener, Tunnel

SUPPORT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support")
SMALL = 8 << 20
LARGE = 128 << 20
# Timing decides how many readiness waits a transfer takes, and a few of them may find Asio's
# per-thread recycling cache busy; a per-chunk allocation would show as thousands.
SLACK = 200


def echo_all(conn):
    """Echoes until the client's FIN, then ends its own side."""
    conn.settimeout(30.0)
    while True:
        data = conn.recv(1 << 20)
        if not data:
            break
        conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)


def exchange(port, size):
    """Sends `size` bytes through the tunnel while reading the echo; returns the bytes read."""
    client = socket.create_connection(("127.0.0.1", port), timeout=30.0)
    chunk = bytes(1 << 20)

    def send():
        for _ in range(size // len(chunk)):
            client.sendall(chunk)
        client.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send)
    sender.start()
    received = 0
    while True:
        data = client.recv(1 << 20)
        if not data:
            break
        received += len(data)
    sender.join()
    client.close()
    return received


class AllocationTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        if os.environ.get("TCPTUNNEL_SANITIZER"):
            raise unittest.SkipTest("a sanitizer's allocator replaces malloc and must come first: "
                                    "the count is taken in the normal build")
        cls.directory = tempfile.mkdtemp(prefix="tcptunnel-allocations-")
        cls.library = os.path.join(cls.directory, "count_allocations.so")
        subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-o", cls.library,
                        os.path.join(SUPPORT, "count_allocations.c")], check=True)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.directory, ignore_errors=True)

    def _allocations_for(self, size, splice):
        upstream = Listener(echo_all)
        self.addCleanup(upstream.close)
        count_file = os.path.join(self.directory, "count-%d-%s" % (size, splice))
        tunnel = Tunnel("--listen", "127.0.0.1:0", "--to", "127.0.0.1:%d" % upstream.port,
                        "--splice", splice, "--log-level", "warn",
                        env={"LD_PRELOAD": self.library,
                             "TCPTUNNEL_ALLOCATION_COUNT": count_file})
        self.addCleanup(tunnel.stop)

        # A first connection fills the pools and caches that later ones reuse.
        self.assertEqual(exchange(tunnel.port, 1 << 20), 1 << 20)
        self.assertEqual(exchange(tunnel.port, size), size)
        status, _ = tunnel.stop()
        self.assertEqual(status, 0)

        with open(count_file, encoding="ascii") as count:
            return int(count.read())

    def test_sixteen_times_the_bytes_cost_no_more_allocations(self):
        for splice in ("never", "always", "auto"):
            with self.subTest(splice=splice):
                small = self._allocations_for(SMALL, splice)
                large = self._allocations_for(LARGE, splice)

                self.assertLess(abs(large - small), SLACK,
                                "%d allocations for %d MiB, %d for %d MiB"
                                % (small, SMALL >> 20, large, LARGE >> 20))


if __name__ == "__main__":
    unittest.main()
