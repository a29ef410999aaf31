"""The relay image (docker/Dockerfile.relay) built with podman and run with the firewall's flags.

The image is built from the static binary built on this machine (nothing is pulled). Each
container joins a "container" network namespace that the test made, and reaches
host.docker.internal, the "host" namespace across a veth pair, where a TLS server with the DIFC
proxy's certificate layout listens. curl and gh run in the container namespace.
"""

import os
import shutil
import tempfile
import time
import unittest

import container_support as support
import podman_support

MEMORY_LIMIT = 64 * 1024 * 1024
IMAGE_SIZE_GOAL = 8 * 1000 * 1000
TLS_PORT = 18443
ECHO_PORT = 18444
CONCURRENT_CONNECTIONS = 1000
HEALTH_RETRIES = 3  # the image's HEALTHCHECK --retries


@unittest.skipIf(podman_support.why_not_runnable(), podman_support.why_not_runnable())
class RelayImageTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        support.cleanup_stale_runs()
        cls.tag = support.run_tag()
        cls.addClassCleanup(support.cleanup_leftovers, cls.tag)
        cls.podman = podman_support.Podman(cls.tag)
        started = time.monotonic()
        binary_image = cls.podman.import_binary(support.static_binary())
        cls.image = "localhost/tcptunnel-relay:%s" % cls.tag
        build_seconds = cls.podman.build(os.path.join(support.REPO, "docker", "Dockerfile.relay"),
                                         cls.image, {"BINARY_IMAGE": binary_image})
        print("\n  relay image: imported and built in %.1f s (build %.1f s), %.2f MB"
              % (time.monotonic() - started, build_seconds,
                 cls.podman.image_size(cls.image) / 1e6))

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="tcptunnel-%s-" % self.tag)
        self.addCleanup(shutil.rmtree, self.directory, ignore_errors=True)
        self.topology = support.Topology(self.tag).__enter__()
        self.addCleanup(self.topology.close)

    def start_relay(self, name, *command):
        """The relay container with the firewall's flags, in the container namespace."""
        name = "%s-%s" % (self.tag, name)
        self.addCleanup(self.podman.remove, name)
        flags = [*podman_support.FIREWALL_FLAGS, *podman_support.ULIMIT_FLAGS,
                 "--add-host", "host.docker.internal:%s" % support.HOST_ADDRESS]
        self.podman.start(name, self.image,
                          self.topology.namespace_path(self.topology.container), flags, command)
        return name

    def start_tls_server(self):
        pki = support.make_pki(self.directory)
        server = support.start_tls_server(self.topology, self.directory, pki, TLS_PORT)
        self.addCleanup(server.stop)
        return pki, server

    def test_the_image_holds_the_binary_alone_and_runs_unprivileged(self):
        relay = self.start_relay("limits")

        size = self.podman.image_size(self.image)
        user = self.podman.image_config(self.image, "User")
        health = self.podman.image_config(self.image, "Healthcheck")
        status = self.podman.process_status(relay)
        memory_limit = self.podman.cgroup_file(relay, "memory", "memory.limit_in_bytes")
        pids_limit = self.podman.cgroup_file(relay, "pids", "pids.max")
        logs = self.podman.logs(relay)

        self.assertLessEqual(size, IMAGE_SIZE_GOAL)
        self.assertEqual(user, '"65534:65534"')
        self.assertIn('"/tcptunnel","probe"', health)
        self.assertEqual(status["Uid"].split(), ["65534"] * 4)
        for capabilities in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            self.assertEqual(int(status[capabilities], 16), 0, capabilities)
        self.assertEqual(status["NoNewPrivs"], "1")
        self.assertEqual(memory_limit, str(MEMORY_LIMIT))
        self.assertEqual(pids_limit, "20")
        self.assertIn("Forwarding 0.0.0.0:%d" % TLS_PORT, logs)

    def test_curl_and_gh_reach_the_tls_server_through_the_relay(self):
        pki, _ = self.start_tls_server()
        relay = self.start_relay("tls")

        curl = support.curl_rate_limit(self.topology, pki.ca_cert)
        gh = support.gh_rate_limit(self.topology, self.directory, pki.ca_cert)
        logs = self.podman.logs(relay)

        self.assertEqual(curl.returncode, 0, curl.stderr)
        self.assertEqual(curl.stdout, support.RATE_LIMIT_BODY)
        self.assertEqual(gh.returncode, 0, gh.stderr)
        self.assertEqual(gh.stdout.strip(), support.RATE_LIMIT_BODY.strip())
        self.assertIn("upstream=%s:%d" % (support.HOST_ADDRESS, TLS_PORT), logs)

    def test_the_health_check_turns_unhealthy_when_the_upstream_stops(self):
        _, server = self.start_tls_server()
        relay = self.start_relay("health")

        first = self.podman.healthcheck(relay)
        status_while_up = self.podman.health_status(relay)
        server.stop()
        # Failures inside the image's start period (5 s after the start) do not count, as in
        # Docker: check until the status turns, within a bound.
        later = []
        deadline = time.monotonic() + 30
        while self.podman.health_status(relay) != "unhealthy" and time.monotonic() < deadline:
            later.append(self.podman.healthcheck(relay))
            time.sleep(0.25)
        status_after = self.podman.health_status(relay)
        streak = self.podman.inspect(relay, "{{.State.Health.FailingStreak}}")
        last_output = self.podman.inspect(relay, "{{(index .State.Health.Log 0).Output}}")

        self.assertEqual(first.returncode, 0, first.stdout + first.stderr)
        self.assertEqual(status_while_up, "healthy")
        self.assertEqual(status_after, "unhealthy")
        self.assertEqual(streak, str(HEALTH_RETRIES))
        self.assertEqual({check.returncode for check in later}, {1})
        self.assertIn("probe host.docker.internal:%d refused" % TLS_PORT, last_output)

    def test_a_thousand_concurrent_connections_stay_inside_64_mib(self):
        server = support.start_echo_server(self.topology, ECHO_PORT)
        self.addCleanup(server.stop)
        relay = self.start_relay("load", "--listen", "0.0.0.0:%d" % ECHO_PORT,
                                 "--to", "host.docker.internal:%d" % ECHO_PORT,
                                 "--log-level", "warn")

        clients = support.ConcurrentClients(self.topology, "127.0.0.1:%d" % ECHO_PORT,
                                            CONCURRENT_CONNECTIONS)
        self.addCleanup(clients.release)
        held = clients.wait_held()
        peak = int(self.podman.cgroup_file(relay, "memory", "memory.max_usage_in_bytes"))
        limit_hits = int(self.podman.cgroup_file(relay, "memory", "memory.failcnt"))
        state = self.podman.inspect(relay, "{{.State.Status}}")
        clients.release()

        print("\n  1000 connections through the relay container: memory peak %.1f MiB"
              % (peak / 1048576.0))
        self.assertEqual(held, {"held": CONCURRENT_CONNECTIONS, "errors": []})
        self.assertEqual(state, "running", self.podman.logs(relay))
        self.assertEqual(limit_hits, 0, "the container reached its memory limit")
        self.assertLess(peak, MEMORY_LIMIT)


if __name__ == "__main__":
    unittest.main()
