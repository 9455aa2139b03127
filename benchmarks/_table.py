"""What every benchmark prints: the machine line and a table of rates against the first (reference) row."""

from __future__ import annotations

import os
import platform

import torch


def machine_line(autocast: object, details: str) -> str:
    """CPU architecture, cores, torch version and autocast dtype, then the benchmark's own settings."""
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"autocast {autocast or 'off'}, {details}")


def rate_table(first_column: str, rows: list[tuple[str, float]]) -> str:
    """A markdown table of images/s, each row also as a ratio to the first row (measured in the same run)."""
    lines = [f"| {first_column} | images/s | vs model only |", "|---|---|---|"]
    lines += [f"| {name} | {rate:.1f} | {rate / rows[0][1]:.2f} |" for name, rate in rows]
    return "\n".join(lines)
