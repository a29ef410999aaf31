"""A log reader that stops reading (a full stderr pipe, a paused terminal) costs log lines, never
the relay or the shutdown: the tunnel drops what stderr cannot take, and once stderr takes lines
again its next line says how many were dropped.

The tests shrink the stderr pipe to four pages, so a hundred close lines fill it.
"""

import fcntl
import os
import re
import signal
import time
import unittest

from tunnel_harness import Listener, Tunnel, connect, echo_handler, exchange

F_SETPIPE_SZ = 1031
PIPE_SIZE = 16384
CONNECTIONS = 200  # about 40 KiB of close lines


class StalledLogReaderTest(unittest.TestCase):

    def setUp(self):
        self.upstream = Listener(echo_handler)
        self.addCleanup(self.upstream.close)

        self.log_reader, log_writer = os.pipe()
        self.addCleanup(os.close, self.log_reader)
        fcntl.fcntl(self.log_reader, F_SETPIPE_SZ, PIPE_SIZE)
        self.tunnel = Tunnel("--listen", "127.0.0.1:0",
                             "--to", "127.0.0.1:%d" % self.upstream.port, stderr=log_writer)
        os.close(log_writer)
        self.addCleanup(self.tunnel.stop)
        self.port = self.tunnel.port

    def relay_connections(self, count):
        for number in range(count):
            payload = b"ping %d" % number
            with connect(self.port) as client:
                self.assertEqual(exchange(client, payload, timeout=5), payload,
                                 "connection %d of %d" % (number + 1, count))

    def read_log(self):
        """What the tunnel wrote to stderr and nobody has read yet."""
        os.set_blocking(self.log_reader, False)
        chunks = []
        try:
            while chunk := os.read(self.log_reader, 65536):
                chunks.append(chunk)
        except BlockingIOError:
            pass
        return b"".join(chunks).decode()

    def stop(self):
        self.tunnel.signal(signal.SIGTERM)
        return self.tunnel.process.wait(timeout=5)

    def test_relay_and_shutdown_go_on_while_nobody_reads_stderr(self):
        self.relay_connections(CONNECTIONS)

        started = time.monotonic()
        status = self.stop()

        self.assertEqual(status, 0)
        self.assertLess(time.monotonic() - started, 2.0)

    def test_the_next_line_through_counts_the_lines_dropped(self):
        self.relay_connections(CONNECTIONS)
        time.sleep(0.2)  # the last close line has been written or dropped
        log = self.read_log()

        self.relay_connections(1)
        self.assertEqual(self.stop(), 0)
        log += self.read_log()

        dropped = [int(count) for count in re.findall(r" log_lines_dropped count=(\d+) ", log)]
        self.assertEqual(len(dropped), 1, log)
        closes = len(re.findall(r" info close ", log))
        self.assertEqual(closes + dropped[0], CONNECTIONS + 1, log)
        self.assertIn('detail="stderr was not being read"', log)
        self.assertIn(" stopped reason=drained", log)


if __name__ == "__main__":
    unittest.main()
