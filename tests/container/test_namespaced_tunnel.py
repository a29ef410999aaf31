"""The hardened container scenario without a container runtime.

A "host" namespace runs a TLS server with the DIFC proxy's certificate layout; a "container"
namespace runs the static tcptunnel the way the firewall runs its containers (uid 65534, no
capabilities, no new privileges, read-only root, memory and pids cgroup) on localhost:18443 towards
host.docker.internal:18443; `gh` in the container namespace reaches the fake GitHub API through it.
"""

import os
import shutil
import tempfile
import unittest

import cgroups
import container_support as support
import hardening

MEMORY_LIMIT = 64 * 1024 * 1024
PIDS_LIMIT = 20
TLS_PORT = 18443
ECHO_PORT = 18444
CONCURRENT_CONNECTIONS = 1000


@unittest.skipIf(support.why_not_runnable(), support.why_not_runnable())
class NamespacedTunnelTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        support.cleanup_stale_runs()

    def setUp(self):
        self.tag = support.run_tag()
        self.directory = tempfile.mkdtemp(prefix="tcptunnel-%s-" % self.tag)
        self.addCleanup(shutil.rmtree, self.directory, ignore_errors=True)
        self.binary = hardening.stage_binary(self.tag, support.static_binary())
        self.addCleanup(shutil.rmtree, os.path.dirname(self.binary), ignore_errors=True)
        self.topology = support.Topology(self.tag).__enter__()
        self.addCleanup(self.topology.close)

    def start_hardened(self, name, *args):
        cgroup = cgroups.Cgroup("tcptunnel-%s-%s" % (self.tag, name), MEMORY_LIMIT, PIDS_LIMIT)
        self.addCleanup(cgroup.remove)
        tunnel = hardening.HardenedTunnel(self.topology, cgroup, self.binary, args)
        self.addCleanup(tunnel.stop)
        return tunnel

    def test_gh_in_the_container_namespace_reaches_the_host_tls_server(self):
        pki = support.make_pki(self.directory)
        server = support.start_tls_server(self.topology, self.directory, pki, TLS_PORT)
        self.addCleanup(server.stop)
        tunnel = self.start_hardened("gh", "--listen", "localhost:%d" % TLS_PORT,
                                     "--to", "host.docker.internal:%d" % TLS_PORT)

        gh = support.gh_rate_limit(self.topology, self.directory, pki.ca_cert)
        status, stderr = tunnel.stop()

        self.assertEqual(gh.returncode, 0, gh.stderr)
        self.assertEqual(gh.stdout.strip(), support.RATE_LIMIT_BODY.strip())
        self.assertEqual(status, 0, stderr)
        self.assertIn("upstream=%s:%d" % (support.HOST_ADDRESS, TLS_PORT), stderr)
        self.assertIn("closed_by=", stderr)

    def test_the_tunnel_runs_with_the_containers_restrictions(self):
        tunnel = self.start_hardened("limits", "--listen", "localhost:%d" % TLS_PORT,
                                     "--to", "host.docker.internal:%d" % TLS_PORT)

        status = tunnel.status()
        root = tunnel.mount_options("/")
        tmp = tunnel.mount_options("/tmp")
        with open("/proc/%d/cgroup" % tunnel.pid) as cgroups:
            cgroup_lines = cgroups.read()

        self.assertEqual(status["Uid"].split(), [support.UNPRIVILEGED] * 4)
        self.assertEqual(status["Gid"].split(), [support.UNPRIVILEGED] * 4)
        self.assertEqual(status["Groups"].strip(), "")
        for capabilities in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            self.assertEqual(int(status[capabilities], 16), 0, capabilities)
        self.assertEqual(status["NoNewPrivs"], "1")
        self.assertEqual(status["NSpid"].split()[-1], "1", "not PID 1 of its own PID namespace")
        self.assertIn("ro", root)
        self.assertIn("tmpfs", tmp)
        self.assertIn("tcptunnel-%s-limits" % self.tag, cgroup_lines)
        self.assertEqual(tunnel.cgroup.read("memory", "memory.limit_in_bytes"), str(MEMORY_LIMIT))
        self.assertEqual(tunnel.cgroup.read("pids", "pids.max"), str(PIDS_LIMIT))
        self.assertIn("Forwarding localhost:%d" % TLS_PORT, tunnel.ready_line)

    def test_a_thousand_concurrent_connections_stay_inside_64_mib(self):
        server = support.start_echo_server(self.topology, ECHO_PORT)
        self.addCleanup(server.stop)
        tunnel = self.start_hardened("load", "--listen", "127.0.0.1:%d" % ECHO_PORT,
                                     "--to", "host.docker.internal:%d" % ECHO_PORT,
                                     "--log-level", "warn")

        clients = support.ConcurrentClients(self.topology, "127.0.0.1:%d" % ECHO_PORT,
                                            CONCURRENT_CONNECTIONS)
        self.addCleanup(clients.release)
        held = clients.wait_held()
        peak = int(tunnel.cgroup.read("memory", "memory.max_usage_in_bytes"))
        limit_hits = int(tunnel.cgroup.read("memory", "memory.failcnt"))
        alive = tunnel.process.poll() is None
        clients.release()
        status, stderr = tunnel.stop()

        print("\n  1000 connections: cgroup memory peak %.1f MiB" % (peak / 1048576.0))
        self.assertEqual(held, {"held": CONCURRENT_CONNECTIONS, "errors": []})
        self.assertTrue(alive, stderr)
        self.assertEqual(limit_hits, 0, "the cgroup reached its memory limit")
        self.assertLess(peak, MEMORY_LIMIT)
        self.assertEqual(status, 0, stderr)


if __name__ == "__main__":
    unittest.main()
