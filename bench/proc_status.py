"""A process's numbers from ``/proc/<pid>/status``, for the benchmarks that watch
memory (Linux only)."""

from __future__ import annotations


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """Every numeric field of the process's status: sizes in KiB (``VmRSS``,
    ``RssAnon``, ...), counts as they are (``Threads``, ...)."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            key, _, value = line.partition(":")
            first = value.split()[:1]
            if first and first[0].isdigit():
                fields[key] = int(first[0])
    return fields
