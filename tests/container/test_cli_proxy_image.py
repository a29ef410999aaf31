"""The cli-proxy stage of docker/Dockerfile: its entrypoint and health check, run with podman.

The firewall's cli-proxy base image cannot be pulled here, so the stage is built on a stand-in:
Debian's static busybox (a shell, cat, cp, sleep). The image's command, normally the Node HTTP
server, is `sleep`: what is under test is what the entrypoint does before and around it. The
container joins a "container" network namespace that the test made; the TLS server with the DIFC
proxy's certificate layout runs in the "host" namespace as host.docker.internal.
"""

import os
import shutil
import tempfile
import time
import unittest

import container_support as support
import podman_support

TLS_PORT = 18443
# The firewall's hardening of the cli-proxy container (DESIGN.md), and of the relay.
CLI_PROXY_FLAGS = ["--cap-drop", "ALL", "--security-opt", "no-new-privileges",
                   "--memory", "256m", "--pids-limit", "50", "--user", "65534"]
APPLICATION = ["sleep", "600"]


@unittest.skipIf(podman_support.why_not_runnable(["busybox"]),
                 podman_support.why_not_runnable(["busybox"]))
class CliProxyImageTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        support.cleanup_stale_runs()
        cls.tag = support.run_tag()
        cls.addClassCleanup(support.cleanup_leftovers, cls.tag)
        cls.podman = podman_support.Podman(cls.tag)
        binary_image = cls.podman.import_binary(support.static_binary())
        base_image = cls.podman.import_busybox_base()
        cls.image = "localhost/tcptunnel-cli-proxy:%s" % cls.tag
        cls.podman.build(os.path.join(support.REPO, "docker", "Dockerfile"), cls.image,
                         {"BINARY_IMAGE": binary_image, "CLI_PROXY_IMAGE": base_image},
                         target="cli-proxy")

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="tcptunnel-%s-" % self.tag)
        self.addCleanup(shutil.rmtree, self.directory, ignore_errors=True)
        self.topology = support.Topology(self.tag).__enter__()
        self.addCleanup(self.topology.close)
        self.pki = support.make_pki(self.directory)
        os.chmod(self.pki.ca_cert, 0o644)

    def flags(self, *extra):
        return [*CLI_PROXY_FLAGS, *podman_support.ULIMIT_FLAGS,
                "--add-host", "host.docker.internal:%s" % support.HOST_ADDRESS, *extra]

    def ca_mount(self):
        return ["--volume", "%s:/tmp/proxy-tls/ca.crt:ro" % self.pki.ca_cert]

    def start(self, name, *extra):
        name = "%s-%s" % (self.tag, name)
        self.addCleanup(self.podman.remove, name)
        self.podman.start(name, self.image,
                          self.topology.namespace_path(self.topology.container),
                          self.flags(*extra), APPLICATION)
        return name

    def wait_for_log(self, name, text, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            logs = self.podman.logs(name)
            if text in logs:
                return logs
            if self.podman.inspect(name, "{{.State.Status}}") != "running":
                break
            time.sleep(0.2)
        self.fail("no %r in the container's log: %s" % (text, self.podman.logs(name)))

    def start_tls_server(self):
        server = support.start_tls_server(self.topology, self.directory, self.pki, TLS_PORT)
        self.addCleanup(server.stop)
        return server

    def test_gh_reaches_the_proxy_through_the_tunnel_the_entrypoint_starts(self):
        self.start_tls_server()
        proxy = self.start("proxy", *self.ca_mount())
        self.wait_for_log(proxy, "gh routes through the DIFC proxy at localhost:%d" % TLS_PORT)

        gh = support.gh_rate_limit(self.topology, self.directory, self.pki.ca_cert)
        health = self.podman.healthcheck(proxy)
        self.podman.run(["stop", "--time", "10", proxy])
        exit_code = self.podman.inspect(proxy, "{{.State.ExitCode}}")
        logs = self.podman.logs(proxy)

        self.assertEqual(gh.returncode, 0, gh.stderr)
        self.assertEqual(gh.stdout.strip(), support.RATE_LIMIT_BODY.strip())
        self.assertEqual(health.returncode, 0, self.podman.inspect(proxy, "{{json .State.Health}}"))
        self.assertIn("Forwarding localhost:%d" % TLS_PORT, logs)
        self.assertIn("probe localhost:%d ok" % TLS_PORT, logs)
        self.assertEqual(exit_code, "0", logs)

    def test_relay_only_listens_on_every_address_and_checks_the_upstream(self):
        self.start_tls_server()
        relay = self.start("relay", "--read-only", "--env", "AWF_CLI_PROXY_RELAY_ONLY=1")
        self.wait_for_log(relay, "Forwarding 0.0.0.0:%d" % TLS_PORT)

        # From the host namespace to the container's veth address: only a 0.0.0.0 listener
        # answers there. The name stays "localhost", the one the certificate carries.
        curl = self.topology.run(self.topology.host, [
            "curl", "-sS", "--max-time", "20", "--cacert", self.pki.ca_cert,
            "--resolve", "localhost:%d:%s" % (TLS_PORT, support.CONTAINER_ADDRESS),
            "https://localhost:%d/api/v3/rate_limit" % TLS_PORT], env=support.clean_environment())
        health = self.podman.healthcheck(relay)
        health_output = self.podman.inspect(relay, "{{(index .State.Health.Log 0).Output}}")

        self.assertEqual(curl.returncode, 0, curl.stderr)
        self.assertEqual(curl.stdout, support.RATE_LIMIT_BODY)
        self.assertEqual(health.returncode, 0, health_output)
        self.assertIn("probe host.docker.internal:%d ok" % TLS_PORT, health_output)

    def test_a_missing_ca_certificate_stops_the_container_with_one_line(self):
        name = "%s-noca" % self.tag
        self.addCleanup(self.podman.remove, name)

        completed = self.podman.run(
            ["run", "--name", name, "--network",
             "ns:" + self.topology.namespace_path(self.topology.container),
             "--cgroup-parent", "/tcptunnel-%s-podman" % self.tag, *self.flags(), self.image,
             *APPLICATION], check=False, timeout=60)

        self.assertEqual(completed.returncode, 1, completed.stdout + completed.stderr)
        self.assertIn("[cli-proxy] ERROR: the DIFC proxy's CA certificate is missing at "
                      "/tmp/proxy-tls/ca.crt", completed.stdout)
        self.assertNotIn("Forwarding", completed.stdout)


if __name__ == "__main__":
    unittest.main()
