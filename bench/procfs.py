"""CPU time and resident memory of a process and its descendants, read from /proc.

socat forks a child per connection, so every figure covers the whole process tree: the live
descendants' own counters, plus the counters of children the root already reaped (cutime, cstime).
"""

import os

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid):
    """The fields of /proc/PID/stat after the command name, or None once the process is gone."""
    try:
        with open("/proc/%d/stat" % pid, encoding="ascii", errors="replace") as stat:
            text = stat.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def descendants(root):
    """PIDs of every live process below root (this kernel has no /proc/PID/task/TID/children)."""
    children = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(name))
    found, pending = [], [root]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def tree_cpu_seconds(root):
    """User plus system CPU seconds of root, its reaped children and its live descendants."""
    total = 0
    fields = _stat_fields(root)
    if fields is None:
        return None
    # Fields 14-17 of stat(5): utime, stime, cutime, cstime; the list starts at field 3.
    total += sum(int(value) for value in fields[11:15])
    for pid in descendants(root):
        child = _stat_fields(pid)
        if child is not None:
            total += int(child[11]) + int(child[12])
    return total / CLOCK_TICKS


def _rss_kib(pid, field):
    try:
        with open("/proc/%d/status" % pid, encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_kib(root, field="VmRSS"):
    """A /proc/PID/status memory field (VmRSS, RssAnon, RssFile) of root and its live
    descendants, in KiB; shared pages count once per process."""
    return _rss_kib(root, field) + sum(_rss_kib(pid, field) for pid in descendants(root))
