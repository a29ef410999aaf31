"""The static build (-DTCPTUNNEL_STATIC=ON -DTCPTUNNEL_STRIP=ON): self-contained, small, and
working in an empty root filesystem (the `FROM scratch` image) with only a hosts file."""

import os
import shutil
import struct
import subprocess
import tempfile
import unittest

import container_support as support
import tunnel_harness

SIZE_GOAL = 6 * 1000 * 1000
PT_INTERP = 3


def program_header_types(path):
    """The p_type of every program header of a 64-bit little-endian ELF file."""
    with open(path, "rb") as elf:
        header = elf.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
            raise ValueError("%s is not a 64-bit little-endian ELF file" % path)
        (program_headers_at,) = struct.unpack_from("<Q", header, 0x20)
        entry_size, entry_count = struct.unpack_from("<HH", header, 0x36)
        types = []
        for index in range(entry_count):
            elf.seek(program_headers_at + index * entry_size)
            (kind,) = struct.unpack("<I", elf.read(4))
            types.append(kind)
        return types


@unittest.skipIf(support.static_binary() is None, "no static binary: set TCPTUNNEL_STATIC_BIN")
class StaticBinaryTest(unittest.TestCase):

    def setUp(self):
        self.binary = support.static_binary()

    def test_the_binary_needs_no_loader_and_is_within_the_size_goal(self):
        size = os.path.getsize(self.binary)
        types = program_header_types(self.binary)

        print("\n  static binary: %d bytes (%.2f MB)" % (size, size / 1e6))
        self.assertNotIn(PT_INTERP, types, "the binary asks for a dynamic loader")
        self.assertLessEqual(size, SIZE_GOAL)

    def test_version_says_static(self):
        completed = subprocess.run([self.binary, "--version"], capture_output=True, text=True,
                                   timeout=10)

        self.assertEqual(completed.returncode, 0, completed.stderr)
        self.assertRegex(completed.stdout, r"^tcptunnel \S+ \(asio \S+, OpenSSL .*, static\)$")


@unittest.skipIf(support.static_binary() is None, "no static binary: set TCPTUNNEL_STATIC_BIN")
@unittest.skipIf(os.geteuid() != 0, "needs root (chroot)")
class EmptyRootTest(unittest.TestCase):
    """The binary alone in a directory, run with chroot: no libraries, no NSS, no CA store."""

    def setUp(self):
        self.root = tempfile.mkdtemp(prefix="tcptunnel-empty-root-")
        self.addCleanup(shutil.rmtree, self.root, ignore_errors=True)
        shutil.copy(support.static_binary(), os.path.join(self.root, "tcptunnel"))
        self.listener = tunnel_harness.Listener(lambda connection: None)
        self.addCleanup(self.listener.close)

    def write_hosts(self):
        os.makedirs(os.path.join(self.root, "etc"))
        with open(os.path.join(self.root, "etc", "hosts"), "w") as hosts:
            hosts.write("127.0.0.1 localhost\n127.0.0.1 host.docker.internal\n")

    def probe(self):
        return subprocess.run(
            ["chroot", self.root, "/tcptunnel", "probe",
             "--to", "host.docker.internal:%d" % self.listener.port, "--timeout", "3s"],
            capture_output=True, text=True, timeout=30, env=support.clean_environment())

    def test_it_resolves_host_docker_internal_from_the_hosts_file_alone(self):
        self.write_hosts()

        completed = self.probe()

        self.assertEqual(completed.returncode, 0, completed.stdout + completed.stderr)
        self.assertIn("ok connected to 127.0.0.1:%d" % self.listener.port, completed.stdout)

    def test_without_a_hosts_file_the_name_fails_with_a_dns_word(self):
        completed = self.probe()

        self.assertEqual(completed.returncode, 1, completed.stdout + completed.stderr)
        self.assertRegex(completed.stdout, r" dns-(temporary|nxdomain) ")


if __name__ == "__main__":
    unittest.main()
