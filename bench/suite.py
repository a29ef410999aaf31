"""Runs every benchmark against every variant, interleaved, and writes the table and the JSON.

Usage (bench/run does the install and the build first):
  python3 bench/suite.py --build-dir DIR [--quick] [--reps N] [--variants a,b] [--output FILE]
Progress goes to stderr, the Markdown table to stdout.
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import cross_check
import procfs
import report
import variants as variant_catalogue

SETTINGS = {
    # reps, seconds per throughput run, churn seconds, ping rounds, settle seconds
    "full": {"reps": 3, "throughput_s": 2.0, "churn_s": 3.0, "ping_rounds": 20000,
             "ping_warmup": 1000, "settle_s": 0.5, "iperf3_s": 2},
    "quick": {"reps": 2, "throughput_s": 0.5, "churn_s": 0.5, "ping_rounds": 3000,
              "ping_warmup": 300, "settle_s": 0.2, "iperf3_s": 1},
}
CHURN_CONCURRENCY = 64
CHURN_MESSAGE = 100
PING_SIZE = 64
HELD_CONNECTIONS = 1000
GIB = 1 << 30


class LoadGenerator:
    """The tcptunnel_loadgen process: one command line in, one JSON line out."""

    def __init__(self, binary):
        self.process = subprocess.Popen([binary], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True)
        hello = json.loads(self.process.stdout.readline())
        self.upstream_port = int(hello["upstream_port"])
        self.open_files_limit = int(hello["open_files_limit"])

    def __call__(self, *words):
        text = " ".join(str(word) for word in words)
        self.process.stdin.write(text + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the load generator exited during: " + text)
        return json.loads(line)

    def close(self):
        """Ends the load generator, which ends every tunnel it started."""
        try:
            self.process.stdin.close()
            self.process.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait(timeout=10)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def log_tail(path, lines=5):
    try:
        with open(path, encoding="utf-8", errors="replace") as log:
            return " | ".join(log.read().splitlines()[-lines:])
    except OSError:
        return ""


class TunnelCpu:
    """CPU seconds the tunnel's process tree spends during one measurement."""

    def __init__(self, pid, forks):
        self.pid = pid
        self.forks = forks
        self.before = None
        self.children = set()

    def start(self):
        if self.pid:
            self.children = set(procfs.descendants(self.pid)) if self.forks else set()
            self.before = procfs.tree_cpu_seconds(self.pid)

    def stop(self):
        """CPU seconds since start(), or None without a tunnel."""
        if not self.pid:
            return None
        if self.forks:
            # A per-connection child's time reaches the parent's cutime only once reaped, a moment
            # after its connection ends (socat lingers up to 0.5 s on a half-closed one).
            deadline = time.monotonic() + 3
            while (set(procfs.descendants(self.pid)) - self.children and
                   time.monotonic() < deadline):
                time.sleep(0.01)
            time.sleep(0.05)
        return procfs.tree_cpu_seconds(self.pid) - self.before


def throughput(loadgen, port, cpu, direction, streams, seconds, sample, name):
    cpu.start()
    answer = loadgen("throughput", port, direction, streams, seconds)
    if cpu.pid:
        sample[name + "_cpu_s"] = cpu.stop()
    sample[name + "_bytes"] = answer["bytes"]
    elapsed = answer["seconds"]
    sample[name + "_gbps"] = answer["bytes"] * 8 / elapsed / 1e9 if elapsed else 0
    sample[name + "_errors"] = answer["errors"]
    sample[name + "_loadgen_cpu_per_s"] = answer["cpu_s"] / max(answer["seconds"], 1e-9)
    if answer["first_error"]:
        sample.setdefault("problems", []).append("%s: %s" % (name, answer["first_error"]))


def measure(loadgen, variant, settings, temp, rep):
    """One repetition of every figure for one variant; a dict of figures."""
    sample = {}
    pid = None
    port = loadgen.upstream_port
    log_path = os.path.join(temp, "%s-%d.log" % (variant.key, rep))
    if variant.argv:
        port = free_port()
        argv = variant.argv(port, loadgen.upstream_port, temp)
        if any(not word or any(c.isspace() for c in word) for word in argv):
            raise RuntimeError("argument with white space in " + repr(argv))
        started = loadgen("spawn", port, log_path, 20, *argv)
        if started["error"]:
            raise RuntimeError("%s: %s; log: %s" % (variant.key, started["error"],
                                                     log_tail(log_path)))
        pid = started["pid"]
        sample["ready_ms"] = started["ready_us"] / 1000
        time.sleep(settings["settle_s"])
        sample["rss_idle_kib"] = procfs.tree_rss_kib(pid)
        sample["rss_anon_idle_kib"] = procfs.tree_rss_kib(pid, "RssAnon")
        if not sample["rss_idle_kib"]:
            loadgen("stop", pid, 1)
            raise RuntimeError("%s: exited right after accepting (another program on port %d?); "
                               "log: %s" % (variant.key, port, log_tail(log_path)))
    try:
        seconds = settings["throughput_s"]
        cpu = TunnelCpu(pid, variant.forks)
        throughput(loadgen, port, cpu, "up", 1, seconds, sample, "up1")
        throughput(loadgen, port, cpu, "down", 1, seconds, sample, "down1")
        throughput(loadgen, port, cpu, "up", 4, seconds, sample, "up4")
        if pid:
            relayed = (sample["up1_bytes"] + sample["down1_bytes"]) / GIB
            sample["cpu_s_per_gib"] = (sample["up1_cpu_s"] + sample["down1_cpu_s"]) / relayed
            sample["cpu_s_per_gib_4"] = sample["up4_cpu_s"] / (sample["up4_bytes"] / GIB)

        cpu.start()
        churn = loadgen("churn", port, CHURN_CONCURRENCY, settings["churn_s"], CHURN_MESSAGE)
        sample["churn_rate"] = churn["completed"] / churn["seconds"]
        sample["churn_errors"] = churn["errors"]
        sample["churn_error_kinds"] = churn["error_kinds"]
        sample["churn_p99_ms"] = churn["p99_us"] / 1000
        sample["churn_loadgen_cpu_per_s"] = churn["cpu_s"] / churn["seconds"]
        if pid:
            exchanges = churn["completed"] + churn["drained"]
            sample["cpu_us_per_conn"] = cpu.stop() / exchanges * 1e6 if exchanges else None

        ping = loadgen("ping", port, PING_SIZE, settings["ping_rounds"], settings["ping_warmup"],
                       30)
        for key in ("p50", "p99", "p999", "mean"):
            sample["ping_%s_us" % key] = ping[key + "_us"]
        if ping["error"]:
            sample.setdefault("problems", []).append("ping: " + ping["error"])

        before = procfs.tree_rss_kib(pid) if pid else 0
        held = loadgen("hold", port, HELD_CONNECTIONS)
        time.sleep(settings["settle_s"])
        if pid and held["held"]:
            sample["rss_before_hold_kib"] = before
            sample["rss_held_kib"] = procfs.tree_rss_kib(pid)
            sample["kib_per_conn"] = (sample["rss_held_kib"] - before) / held["held"]
        sample["held"] = held["held"]
        sample["hold_errors"] = held["errors"]
        if held["first_error"]:
            sample.setdefault("problems", []).append("hold: " + held["first_error"])
        loadgen("release")
        time.sleep(min(settings["settle_s"], 0.3))  # let the tunnel see the ends before SIGTERM
    finally:
        if pid:
            stopped = loadgen("stop", pid, 5)
            sample["exit_status"] = stopped["exited"]
            # tcptunnel promises status 0 on SIGTERM; the peers' own conventions are accepted.
            clean = stopped["exited"] == 0 or not variant.key.startswith("tcptunnel")
            if stopped["killed"] or not clean:
                sample.setdefault("problems", []).append(
                    "stop: exit %s signal %s killed %s; log: %s" % (
                        stopped["exited"], stopped["signal"], stopped["killed"],
                        log_tail(log_path)))
    return sample


def machine_facts():
    with open("/proc/loadavg", encoding="ascii") as loadavg:
        load = loadavg.read().split()[:3]
    model = ""
    with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"kernel": os.uname().release, "cpus": os.cpu_count(), "cpu_model": model,
            "loadavg": " ".join(load)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build-dir", default="build/bench")
    parser.add_argument("--io-uring-build-dir")
    parser.add_argument("--static-build-dir")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, shorter runs")
    parser.add_argument("--reps", type=int, help="repetitions (at least 1)")
    parser.add_argument("--variants", help="comma-separated keys; 'list' shows them")
    parser.add_argument("--output", default=os.path.join(variant_catalogue.BENCH_DIR, "results",
                                                         "latest.json"))
    parser.add_argument("--render", metavar="JSON",
                        help="print the tables of an earlier run's JSON file, measuring nothing")
    args = parser.parse_args()
    if args.render:
        with open(args.render, encoding="utf-8") as earlier:
            print(report.markdown(report.refresh(json.load(earlier))))
        return 0

    mode = "quick" if args.quick else "full"
    settings = dict(SETTINGS[mode])
    if args.reps:
        settings["reps"] = max(1, args.reps)
    # The load generator executes the tunnels by absolute path (no PATH search in it).
    tcptunnel = os.path.abspath(os.path.join(args.build_dir, "tcptunnel"))
    uring = (os.path.abspath(os.path.join(args.io_uring_build_dir, "tcptunnel"))
             if args.io_uring_build_dir else None)
    static = (os.path.abspath(os.path.join(args.static_build_dir, "tcptunnel"))
              if args.static_build_dir else None)
    rows, missing = variant_catalogue.discover(tcptunnel, uring, static)
    if args.variants == "list":
        for row in rows:
            print("%-28s %s%s" % (row.key, row.label, "" if row.default else "  (opt-in)"))
        return 0
    wanted = args.variants.split(",") if args.variants else None
    unknown = set(wanted or []) - {row.key for row in rows}
    if unknown:
        print("bench: unknown variant(s) %s (see --variants list)" % ", ".join(sorted(unknown)),
              file=sys.stderr)
        return 2
    rows = [row for row in rows
            if (row.key in wanted if wanted else row.default and (row.quick or not args.quick))]

    temp = tempfile.mkdtemp(prefix="tcptunnel-bench-")
    started = time.monotonic()
    facts = machine_facts()
    loadgen = LoadGenerator(os.path.join(args.build_dir, "bench", "tcptunnel_loadgen"))
    samples = {row.key: [] for row in rows}
    iperf3 = []
    failures = {}
    try:
        for rep in range(settings["reps"]):
            # Each repetition starts one place further down the list, so that no variant always
            # runs right after the same neighbour or at the same point of a drifting load.
            order = rows[rep % len(rows):] + rows[:rep % len(rows)]
            for row in order:
                if row.key in failures:
                    continue
                begun = time.monotonic()
                try:
                    samples[row.key].append(measure(loadgen, row, settings, temp, rep))
                except RuntimeError as error:
                    failures[row.key] = str(error)
                    print("bench: %s failed: %s" % (row.key, error), file=sys.stderr)
                    continue
                if row.key == "direct":
                    # A second opinion on the loopback limit, taken next to the load generator's
                    # own direct figures so that both see the same background load.
                    iperf3.append(cross_check.iperf3_direct(settings["iperf3_s"]))
                print("bench: rep %d/%d %-28s %.1f s" % (rep + 1, settings["reps"], row.key,
                                                         time.monotonic() - begun),
                      file=sys.stderr)
    finally:
        loadgen.close()
        shutil.rmtree(temp, ignore_errors=True)

    facts["loadavg_after"] = machine_facts()["loadavg"]
    facts["open_files_limit"] = loadgen.open_files_limit
    results = report.build(rows, samples, failures, missing, settings, mode, facts, iperf3,
                           time.monotonic() - started)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as output:
        json.dump(results, output, indent=2, sort_keys=False)
        output.write("\n")
    print(report.markdown(results))
    print("bench: wrote %s in %.0f s" % (os.path.abspath(args.output),
                                         time.monotonic() - started), file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
