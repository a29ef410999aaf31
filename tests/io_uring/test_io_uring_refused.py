"""The io_uring build where io_uring is refused: one clear line and status 1, not an abort.

Docker's default seccomp profile answers io_uring_setup with EPERM and podman's with ENOSYS. The
child process here installs the same kind of seccomp filter (prctl(PR_SET_SECCOMP), built with
ctypes) just before it executes the binary. Registered with ctest only for -DTCPTUNNEL_IO_URING=ON.
"""

import ctypes
import errno
import os
import socket
import subprocess
import unittest

from tunnel_harness import BINARY, Listener, Tunnel, echo_handler, free_port

# io_uring_setup is number 425 in the generic syscall table, which x86-64 and arm64 share.
# Limitation: the filter matches on the number alone (no audit-arch check), which is enough for
# a native 64-bit binary on those two architectures.
IO_URING_SETUP = 425
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000
BPF_LD_W_ABS = 0x20
BPF_JEQ_K = 0x15
BPF_RET_K = 0x06


class SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                ("k", ctypes.c_uint)]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


def refusing(error_number):
    """A preexec_fn that makes io_uring_setup fail with error_number in the child."""
    program = (SockFilter * 4)(
        SockFilter(BPF_LD_W_ABS, 0, 0, 0),  # seccomp_data.nr
        SockFilter(BPF_JEQ_K, 0, 1, IO_URING_SETUP),
        SockFilter(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | error_number),
        SockFilter(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW))
    fprog = SockFprog(len(program), program)
    libc = ctypes.CDLL(None, use_errno=True)

    def install():
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            os._exit(90)
        if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
            os._exit(91)
    install.keep = (program, fprog)  # alive until the fork
    return install


def run_refused(error_number, *args):
    try:
        return subprocess.run([BINARY, *map(str, args)], capture_output=True, text=True,
                              timeout=5, preexec_fn=refusing(error_number), check=False)
    except subprocess.TimeoutExpired:
        raise AssertionError("the binary kept running with io_uring refused: is it the "
                             "io_uring build?") from None


class IoUringRefused(unittest.TestCase):
    def check_one_line_and_status_1(self, error_number):
        # Arrange: an upstream that would accept, so only io_uring can stop the tunnel.
        with Listener(echo_handler) as upstream:
            # Act
            done = run_refused(error_number, "--listen", "127.0.0.1:%d" % free_port(),
                               "--to", "127.0.0.1:%d" % upstream.port)
        # Check
        self.assertNotIn(done.returncode, (90, 91), "the seccomp filter was not installed")
        self.assertEqual(done.returncode, 1, done.stderr)
        self.assertEqual(done.stdout, "")
        self.assertEqual(done.stderr,
                         "tcptunnel: io_uring is not available (io_uring_setup: %s): "
                         "use the epoll build\n" % os.strerror(error_number))

    def test_refused_with_eperm_as_docker_does(self):
        self.check_one_line_and_status_1(errno.EPERM)

    def test_refused_with_enosys_as_podman_does(self):
        self.check_one_line_and_status_1(errno.ENOSYS)

    def test_help_still_works_with_io_uring_refused(self):
        done = run_refused(errno.EPERM, "--help")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("--listen", done.stdout)

    def test_relays_where_io_uring_is_allowed(self):
        # Arrange
        with Listener(echo_handler) as upstream, \
                Tunnel("--listen", "127.0.0.1:%d" % free_port(),
                       "--to", "127.0.0.1:%d" % upstream.port) as tunnel:
            # Act
            with socket.create_connection(("127.0.0.1", tunnel.port), timeout=5) as client:
                client.sendall(b"ping over io_uring")
                reply = b""
                while len(reply) < 18:
                    data = client.recv(64)
                    if not data:
                        break
                    reply += data
        # Check
        self.assertEqual(reply, b"ping over io_uring")


if __name__ == "__main__":
    unittest.main()
