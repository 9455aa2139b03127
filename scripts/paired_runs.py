"""Paired difference of two sets of runs on the same test part: Δ study mAP, Δ macro-F1, Δ AUROC with 95 % CIs.

Each run is a ``test_predictions.npz`` (written by every Stage II run, and copied next to each Table I record).
``--a`` and ``--b`` list runs paired by position (the same training seed); the interval is the seed-and-patient
bootstrap of ``studies.ablation.bootstrap_deltas`` (with one pair: the test patients' sampling only, which says
nothing about seed noise: issue 16, item 8).

    python scripts/paired_runs.py --a runs/v/seed0/test_predictions.npz --b results/table1-siim128/seed0_row1.npz
"""

from __future__ import annotations

import argparse
from pathlib import Path

from deeppneumonia.studies.ablation import bootstrap_deltas, load_predictions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--a", type=Path, nargs="+", required=True, help="runs of method A (test_predictions.npz)")
    ap.add_argument("--b", type=Path, nargs="+", required=True, help="runs of method B, same seeds in the same order")
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args()
    if len(args.a) != len(args.b) or args.n_boot < 1:
        raise SystemExit("error: --a and --b need the same number of runs (paired by seed), --n-boot >= 1")
    deltas = bootstrap_deltas([load_predictions(p) for p in args.a], [load_predictions(p) for p in args.b], args.n_boot)
    if deltas is None:
        raise SystemExit("error: the runs were scored on different test images")
    kind = "seeds and test patients" if len(args.a) > 1 else "test patients only (one pair: no seed noise)"
    print(f"A minus B over {len(args.a)} paired run(s); 95 % bootstrap over {kind}")
    for name, (mean, lo, hi) in deltas.items():
        print(f"  Δ {name}: {mean:+.3f} [{lo:+.3f}, {hi:+.3f}]")


if __name__ == "__main__":
    main()
