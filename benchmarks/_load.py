"""The load check every latency benchmark prints: numbers from a busy machine are not the machine's speed."""

from __future__ import annotations

import os

BUSY_PER_CORE = 0.5
"""1-minute load average per logical CPU above which a measurement is marked as taken on a busy machine."""


def load_line() -> tuple[str, bool]:
    """('load average 1/5/15 min: a/b/c on N cores', busy)."""
    one, five, fifteen = os.getloadavg()
    cores = os.cpu_count() or 1
    busy = one > BUSY_PER_CORE * cores
    return f"load average (1/5/15 min) {one:.2f}/{five:.2f}/{fifteen:.2f} on {cores} logical CPUs", busy


def headline(text: str, busy_before: bool, busy_after: bool) -> str:
    """The headline, marked when the machine was busy before the measurement.

    The load after it is printed but not judged: the benchmark's own threads raise the 1-minute average by up
    to their number (2 on a 2-core machine), so "busy after" mostly measures the benchmark itself.
    ``busy_after`` is kept for the callers' signature.
    """
    del busy_after
    if busy_before:
        return (f"**BUSY MACHINE (1-min load above {BUSY_PER_CORE} per core): not the machine's speed; rerun idle.** "
                f"{text}")
    return f"**{text}**"
