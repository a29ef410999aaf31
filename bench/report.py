"""Turns the samples of a run into the results document and its Markdown tables."""

import datetime
import statistics

# key, column header, number format, smaller is better, measured for direct too
FIGURES = [
    ("up1_gbps", "1 stream up Gbit/s", "%.1f", False, True),
    ("down1_gbps", "1 stream down Gbit/s", "%.1f", False, True),
    ("up4_gbps", "4 streams up Gbit/s", "%.1f", False, True),
    ("churn_rate", "churn conn/s", "%.0f", False, True),
    ("ping_p50_us", "ping p50 µs", "%.1f", True, True),
    ("ping_p99_us", "ping p99 µs", "%.1f", True, True),
    ("ping_p999_us", "ping p99.9 µs", "%.0f", True, True),
    ("cpu_s_per_gib", "CPU s/GiB", "%.2f", True, False),
    ("cpu_us_per_conn", "CPU µs/conn", "%.0f", True, False),
    ("rss_idle_kib", "RSS idle KiB", "%.0f", True, False),
    ("kib_per_conn", "KiB/conn (1000 idle)", "%.1f", True, False),
    ("ready_ms", "ready ms", "%.2f", True, False),
]
EXTRA_FIGURES = ["cpu_s_per_gib_4", "churn_p99_ms", "ping_mean_us", "rss_anon_idle_kib",
                 "rss_before_hold_kib", "rss_held_kib",
                 "up1_loadgen_cpu_per_s", "down1_loadgen_cpu_per_s", "up4_loadgen_cpu_per_s",
                 "churn_loadgen_cpu_per_s"]
ERROR_COUNTS = ["up1_errors", "down1_errors", "up4_errors", "churn_errors", "hold_errors"]
FIRST_TABLE = 5  # throughput and churn; the rest go in the second table


def _summary(values):
    values = [value for value in values if value is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "samples": values}


def build(rows, samples, failures, missing, settings, mode, facts, iperf3, elapsed):
    variants = {}
    for row in rows:
        runs = samples[row.key]
        figures = {}
        for key in [figure[0] for figure in FIGURES] + EXTRA_FIGURES:
            summary = _summary([run.get(key) for run in runs])
            if summary:
                figures[key] = summary
        kinds = {}
        for run in runs:
            for kind, count in run.get("churn_error_kinds", {}).items():
                kinds[kind] = kinds.get(kind, 0) + count
        variants[row.key] = {
            "label": row.label,
            "version": row.version,
            "repetitions": len(runs),
            "figures": figures,
            "errors": sum(run.get(key, 0) for run in runs for key in ERROR_COUNTS),
            "churn_error_kinds": kinds,
            "problems": [problem for run in runs for problem in run.get("problems", [])],
            "failure": failures.get(row.key),
        }
    iperf3_summary = _iperf3_summary(iperf3)
    add_ratios(variants, iperf3_summary)
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mode": mode,
        "settings": settings,
        "machine": facts,
        "elapsed_s": round(elapsed, 1),
        "variants": variants,
        "not_run": dict(missing),
        "iperf3_direct_gbps": iperf3_summary,
        "loadgen_check": _loadgen_check(variants, iperf3_summary),
        "targets": targets(variants),
    }


def refresh(results):
    """An earlier run's results with the ratios, checks and verdicts of this version."""
    add_ratios(results["variants"], results["iperf3_direct_gbps"])
    results["loadgen_check"] = _loadgen_check(results["variants"], results["iperf3_direct_gbps"])
    results["targets"] = targets(results["variants"])
    return results


def add_ratios(variants, iperf3):
    """Ratios of medians to direct and to HAProxy. For throughput, "direct" is the loopback
    limit: the higher of the load generator's and iperf3's direct medians, so that a direct run
    the load generator could not push to the limit never flatters a tunnel."""
    direct = variants.get("direct", {}).get("figures", {})
    references = {"direct": {key: figure["median"] for key, figure in direct.items()},
                  "haproxy": {key: figure["median"] for key, figure in
                              variants.get("haproxy", {}).get("figures", {}).items()}}
    for key in ("up1_gbps", "down1_gbps", "up4_gbps"):
        if key in iperf3 and key in references["direct"]:
            references["direct"][key] = max(references["direct"][key], iperf3[key]["median"])
    for entry in variants.values():
        for key, figure in entry["figures"].items():
            for reference in ("direct", "haproxy"):
                base = references[reference].get(key)
                if base:
                    figure["ratio_to_" + reference] = figure["median"] / base
        if "ping_p50_us" in direct and "ping_p50_us" in entry["figures"]:
            entry["figures"]["ping_p50_us"]["added_to_direct"] = (
                entry["figures"]["ping_p50_us"]["median"] - direct["ping_p50_us"]["median"])


def _iperf3_summary(runs):
    """Median, min and max of each iperf3 figure over the repetitions; failures listed."""
    summary = {"seconds": runs[0].get("seconds") if runs else None, "failures": []}
    for key in ("up1_gbps", "down1_gbps", "up4_gbps"):
        values = [run[key] for run in runs if isinstance(run.get(key), float)]
        summary["failures"] += [run[key] for run in runs if isinstance(run.get(key), str)]
        summary["failures"] += [run["error"] for run in runs if "error" in run]
        if values:
            summary[key] = _summary(values)
    summary["failures"] = sorted(set(summary["failures"]))
    return summary


def _loadgen_check(variants, iperf3):
    """Is the load generator the limit? Its direct figures against iperf3's, and any tunnel that
    beats direct (which only a load generator slower than the loopback allows)."""
    direct = variants.get("direct", {}).get("figures", {})
    check = {"to_iperf3": {}, "faster_than_direct": []}
    for key in ("up1_gbps", "down1_gbps", "up4_gbps"):
        if key in direct and key in iperf3 and iperf3[key]["median"]:
            check["to_iperf3"][key] = direct[key]["median"] / iperf3[key]["median"]
        for name, entry in variants.items():
            if name == "direct" or key not in entry["figures"] or key not in direct:
                continue
            ratio = entry["figures"][key]["median"] / direct[key]["median"]
            if ratio > 1.1:
                check["faster_than_direct"].append("%s %s %.2f×" % (name, key, ratio))
    return check


# The targets for the tcptunnel rows: (description, figure, test on the figure's summary).
TARGETS = [
    ("1 stream up ≥ 0.85× direct", "up1_gbps", lambda f: f.get("ratio_to_direct"), ">=", 0.85),
    ("1 stream up ≥ 1.2× HAProxy", "up1_gbps", lambda f: f.get("ratio_to_haproxy"), ">=", 1.2),
    ("1 stream down ≥ 0.85× direct", "down1_gbps", lambda f: f.get("ratio_to_direct"), ">=",
     0.85),
    ("1 stream down ≥ 1.2× HAProxy", "down1_gbps", lambda f: f.get("ratio_to_haproxy"), ">=",
     1.2),
    ("CPU ≤ 0.25 s/GiB", "cpu_s_per_gib", lambda f: f["median"], "<=", 0.25),
    ("churn ≥ 1.3× HAProxy", "churn_rate", lambda f: f.get("ratio_to_haproxy"), ">=", 1.3),
    ("CPU ≤ 40 µs/conn", "cpu_us_per_conn", lambda f: f["median"], "<=", 40),
    ("ping p50 ≤ direct + 15 µs", "ping_p50_us", lambda f: f.get("added_to_direct"), "<=", 15),
    ("ping p99 ≤ HAProxy's", "ping_p99_us", lambda f: f.get("ratio_to_haproxy"), "<=", 1.0),
    ("RSS idle ≤ 2 MiB", "rss_idle_kib", lambda f: f["median"], "<=", 2048),
    ("≤ 2 KiB per idle connection", "kib_per_conn", lambda f: f["median"], "<=", 2.0),
    ("ready ≤ 3 ms", "ready_ms", lambda f: f["median"], "<=", 3.0),
]


def targets(variants):
    """Each target against each tcptunnel row as shipped (the default options)."""
    out = {}
    for name in ("tcptunnel", "tcptunnel-static", "tcptunnel-io-uring"):
        figures = variants.get(name, {}).get("figures")
        if not figures:
            continue
        rows = []
        for text, key, pick, sense, limit in TARGETS:
            value = pick(figures[key]) if key in figures else None
            met = None if value is None else (value >= limit if sense == ">=" else value <= limit)
            rows.append({"target": text, "value": value, "met": met})
        out[name] = rows
    return out


def _cell(figure, number_format):
    if not figure:
        return "—"
    text = number_format % figure["median"]
    if len(figure["samples"]) > 1:
        text += " (%s–%s)" % (number_format % figure["min"], number_format % figure["max"])
    return text


def _ratio(figure, reference):
    value = figure.get("ratio_to_" + reference) if figure else None
    return "%.2f×" % value if value is not None else "—"


def _table(header, lines):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out)


def markdown(results):
    variants = results["variants"]
    machine = results["machine"]
    settings = results["settings"]
    parts = ["### tcptunnel benchmark: %s mode, %d interleaved repetitions, %s" % (
        results["mode"], settings["reps"], results["date"]),
        "",
        "Loopback, kernel %s, %s CPUs (%s), load average %s before, %s after; "
        "median (min–max) over the repetitions." % (
            machine["kernel"], machine["cpus"], machine["cpu_model"], machine["loadavg"],
            machine["loadavg_after"]),
        ""]
    for first, last in ((0, FIRST_TABLE), (FIRST_TABLE, len(FIGURES))):
        header = ["variant"] + [figure[1] for figure in FIGURES[first:last]]
        if first == 0:
            header.append("errors")
        lines = []
        for entry in variants.values():
            line = [entry["label"]] + [_cell(entry["figures"].get(key), number_format)
                                       for key, _, number_format, _, _ in FIGURES[first:last]]
            if first == 0:
                line.append(str(entry["errors"]))
            lines.append(line)
        parts += [_table(header, lines), ""]

    parts.append("Ratios of medians, to direct / to HAProxy (throughput and churn: higher is "
                 "better; the others: lower is better). Throughput's direct is the higher of the "
                 "load generator's and iperf3's direct medians:")
    parts.append("")
    header = ["variant"] + [figure[1] for figure in FIGURES] + ["ping p50 added µs"]
    lines = []
    for key, entry in variants.items():
        if key == "direct":
            continue
        line = [entry["label"]]
        for figure_key, _, _, _, has_direct in FIGURES:
            figure = entry["figures"].get(figure_key)
            ratios = [_ratio(figure, "direct")] if has_direct else []
            line.append(" / ".join(ratios + [_ratio(figure, "haproxy")]))
        added = entry["figures"].get("ping_p50_us", {}).get("added_to_direct")
        line.append("%+.1f" % added if added is not None else "—")
        lines.append(line)
    parts += [_table(header, lines), ""]

    direct = variants.get("direct", {}).get("figures", {})
    if direct:
        busiest = max((direct[key]["max"] for key in direct if key.endswith("loadgen_cpu_per_s")),
                      default=0)
        parts.append("Load generator: direct runs used at most %.2f CPU-seconds per second "
                     "(client and server together, of %s CPUs)." % (busiest, machine["cpus"]))
    iperf3 = results["iperf3_direct_gbps"]
    shown = ", ".join("%s %s" % (key.replace("_gbps", ""), _cell(iperf3[key], "%.1f"))
                      for key in ("up1_gbps", "down1_gbps", "up4_gbps") if key in iperf3)
    if shown:
        parts.append("iperf3 direct, %ss runs next to each direct repetition (Gbit/s): %s." % (
            iperf3["seconds"], shown))
    for failure in iperf3["failures"]:
        parts.append("- iperf3: %s" % failure)
    check = results["loadgen_check"]
    if check["to_iperf3"]:
        parts.append("Load generator direct / iperf3 direct: %s (near 1 or above: the load "
                     "generator is not the limit)." % ", ".join(
                         "%s %.2f" % (key.replace("_gbps", ""), value)
                         for key, value in check["to_iperf3"].items()))
    if check["faster_than_direct"]:
        parts.append("- Warning: faster than the load generator's direct run (a noisy or "
                     "limited direct run): %s" %
                     ", ".join(check["faster_than_direct"]))
    for name, rows in results["targets"].items():
        parts += ["", "Targets, %s (medians):" % name, ""]
        lines = [[row["target"], "—" if row["value"] is None else "%.2f" % row["value"],
                  {True: "met", False: "missed", None: "not measured"}[row["met"]]]
                 for row in rows]
        parts.append(_table(["target", "figure", "verdict"], lines))
    for key, entry in variants.items():
        if entry["failure"]:
            parts.append("- %s did not run: %s" % (key, entry["failure"]))
        for problem in sorted(set(entry["problems"]))[:5]:
            parts.append("- %s: %s" % (key, problem))
        if entry["churn_error_kinds"]:
            kinds = ", ".join("%s %d" % item for item in sorted(entry["churn_error_kinds"].items()))
            parts.append("- %s churn errors: %s" % (key, kinds))
    for key, why in results["not_run"].items():
        parts.append("- %s not run: %s" % (key, why))
    return "\n".join(parts)
