"""The ready line is a promise: once it is printed, the tunnel handles its signals. A script (or
a container runtime) that sends SIGTERM or SIGUSR1 the moment it reads the line gets a drain and
exit 0, or a stats line, never a process killed by the signal's default action; nor does a
signal repeated while the tunnel is already exiting.

The window this guards is a few microseconds wide, so the scenario repeats it many times.
"""

import os
import signal
import time
import unittest

from tunnel_harness import Listener, Tunnel, echo_handler, wait_for_lines

ATTEMPTS = 30
REPEATED_ATTEMPTS = 10
SIGNALS_PER_ATTEMPT = 200000


class SignalRightAfterReadyLineTest(unittest.TestCase):

    def setUp(self):
        self.upstream = Listener(echo_handler)
        self.addCleanup(self.upstream.close)

    def _tunnel(self):
        return Tunnel("--listen", "127.0.0.1:0", "--to", "127.0.0.1:%d" % self.upstream.port)

    def test_sigterm_sent_on_the_ready_line_drains_and_exits_0(self):
        statuses = []
        for _ in range(ATTEMPTS):
            tunnel = self._tunnel()

            tunnel.signal(signal.SIGTERM)
            status, stderr = tunnel.stop(timeout=10)

            statuses.append(status)
            if status == 0:
                self.assertIn(" stopped ", stderr)
                self.assertIn("when=exit", stderr)

        failed = [status for status in statuses if status != 0]
        self.assertEqual(failed, [], "%d of %d attempts did not exit 0 (negative: killed by that "
                         "signal)" % (len(failed), ATTEMPTS))

    def test_sigterm_repeated_until_the_process_is_gone_never_kills_it(self):
        # A runtime or an impatient user may send SIGTERM again while the tunnel is already on
        # its way out; the signal that started the exit has decided its status.
        statuses = []
        for _ in range(REPEATED_ATTEMPTS):
            tunnel = self._tunnel()
            deadline = time.monotonic() + 10

            # poll() reaps the process once it has exited, so the pid is never signalled after
            # it could have been reused.
            for _ in range(SIGNALS_PER_ATTEMPT):
                if tunnel.process.poll() is not None or time.monotonic() > deadline:
                    break
                os.kill(tunnel.process.pid, signal.SIGTERM)
            status, stderr = tunnel.stop(timeout=10)

            statuses.append(status)
            if status == 0:
                self.assertIn("when=exit", stderr)

        failed = [status for status in statuses if status != 0]
        self.assertEqual(failed, [], "%d of %d attempts did not exit 0 (negative: killed by that "
                         "signal)" % (len(failed), REPEATED_ATTEMPTS))

    def test_sigusr1_sent_on_the_ready_line_writes_stats_and_keeps_serving(self):
        for _ in range(ATTEMPTS):
            tunnel = self._tunnel()
            self.addCleanup(tunnel.stop)

            tunnel.signal(signal.SIGUSR1)
            stats = wait_for_lines(tunnel, "stats", 1)

            self.assertIsNone(tunnel.process.poll(), "killed by SIGUSR1: %s"
                              % tunnel.process.returncode)
            self.assertEqual(len(stats), 1)
            self.assertEqual(tunnel.stop()[0], 0)


if __name__ == "__main__":
    unittest.main()
