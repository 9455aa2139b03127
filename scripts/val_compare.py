"""Choose between two settings on the validation split: runs paired by seed, compared on their per-epoch logs.

Each run is a Stage II ``train/metrics.jsonl`` (one record per epoch). For every run the script takes three
summaries of a validation metric (default ``study_map``): ``best`` (the value the checkpoint selection keeps; the
maximum is optimistic, alike for both arms), ``last`` (the final epoch) and ``last<k>`` (the mean of the last k
epochs, a steadier read of where training ends), then the per-seed differences A - B with their mean and 95 %
t-interval over the seeds (the spread of the differences is the seed noise; validation sampling noise is in it
too, since every seed sees the same validation patients). The test split is not read: a setting is chosen here,
then reported on test once.

    python scripts/val_compare.py --a runs/h/conv1x1-seed{0,1,2}/train/metrics.jsonl \\
        --b runs/h/cbam-seed{0,1,2}/train/metrics.jsonl --names conv1x1 cbam
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from deeppneumonia.studies.ablation import paired_interval


def summaries(path: Path, metric: str, k: int) -> dict[str, float]:
    """best / last / mean of the last k epochs of ``val_<metric>`` in one metrics.jsonl."""
    values = [float(r[f"val_{metric}"]) for r in map(json.loads, path.read_text().splitlines())
              if r.get(f"val_{metric}") is not None]
    if not values:
        raise SystemExit(f"{path}: no val_{metric} in any epoch")
    return {"best": max(values), "last": values[-1], f"last{k}": statistics.mean(values[-k:])}


def compare(a: list[Path], b: list[Path], metric: str = "study_map", k: int = 3,
            names: tuple[str, str] = ("A", "B")) -> str:
    """The markdown table: per seed each arm's summaries, then the mean difference with its interval."""
    if len(a) != len(b) or not a:
        raise SystemExit("--a and --b need the same number (>= 1) of runs, paired by position (seed)")
    sa = [summaries(p, metric, k) for p in a]
    sb = [summaries(p, metric, k) for p in b]
    keys = list(sa[0])
    head = ["pair"] + [f"{n} {key}" for key in keys for n in names] + [f"Δ {key}" for key in keys]
    lines = [f"val_{metric}, {names[0]} minus {names[1]} (runs paired by position)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, (x, y) in enumerate(zip(sa, sb, strict=True)):
        row = [str(i)] + [f"{v[key]:.3f}" for key in keys for v in (x, y)]
        row += [f"{x[key] - y[key]:+.3f}" for key in keys]
        lines.append("| " + " | ".join(row) + " |")
    cells = []
    for key in keys:
        diffs = [x[key] - y[key] for x, y in zip(sa, sb, strict=True)]
        ci = paired_interval(diffs)  # None with one pair
        cells.append(f"{ci[0]:+.3f} [{ci[1]:+.3f}, {ci[2]:+.3f}]" if ci else f"{diffs[0]:+.3f} (one pair)")
    lines.append("| mean Δ (95 % t-interval over pairs) | " + " | ".join([""] * (2 * len(keys))) + " | "
                 + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", type=Path, nargs="+", required=True, help="metrics.jsonl of setting A, one per seed")
    ap.add_argument("--b", type=Path, nargs="+", required=True, help="metrics.jsonl of setting B, same seeds, same order")
    ap.add_argument("--metric", default="study_map", help="a val_ key of the logs without the prefix")
    ap.add_argument("--last", type=int, default=3, help="k of the mean of the last k epochs")
    ap.add_argument("--names", nargs=2, default=["A", "B"])
    args = ap.parse_args()
    print(compare(args.a, args.b, args.metric, max(1, args.last), (args.names[0], args.names[1])))


if __name__ == "__main__":
    main()
