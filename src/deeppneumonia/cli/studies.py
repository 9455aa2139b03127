"""`deeppneumonia ablate | compare | multilabel | localize`: the studies behind docs/results.md."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from deeppneumonia.cli.common import add_config_args, command_line
from deeppneumonia.errors import ConfigError


def _study_overrides(args: argparse.Namespace) -> list[str]:
    return list(args.overrides) + (["run.progress=false"] if args.quiet else [])


def _publish(out: Path, name: str, table: str, summary: dict[str, Any] | None = None, json_name: str = "") -> int:
    """Write a study's markdown table beside its JSON and print it; with ``summary``, rewrite ``json_name`` with
    the command that made it (``"command"``, which scripts/make_results_doc.py quotes)."""
    if summary is not None:
        summary["command"] = command_line()
        (out / json_name).write_text(json.dumps(summary, indent=1, default=float))
    (out / name).write_text(table)
    print(table)
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    """`deeppneumonia ablate`: the paper's Table I over seeds; writes ablation.json and table1.md."""
    from deeppneumonia.studies.ablation import ablation_markdown, run_ablation

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = run_ablation(args.config, _study_overrides(args), args.seeds, out, args.rows, args.record)
    return _publish(out, "table1.md", ablation_markdown(summary, command_line()), summary, "ablation.json")


def cmd_compare(args: argparse.Namespace) -> int:
    """`deeppneumonia compare`: the paper's Table II (classical and deep baselines); writes table2.md."""
    from deeppneumonia.extras import require
    from deeppneumonia.studies.comparison import comparison_markdown, run_comparison

    require("skimage")  # the classical rows use HOG features; checked before any training

    if args.ablation and not args.ablation.is_file():  # checked before hours of training, not after
        raise ConfigError(f"--ablation {args.ablation}: no such file (it is written by `deeppneumonia ablate`)")
    if args.previous is not None and not args.previous.is_file():
        raise ConfigError(f"--previous {args.previous}: no such file (a comparison.json of `deeppneumonia compare`)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ablation = json.loads(args.ablation.read_text()) if args.ablation else None
    summary = run_comparison(args.config, _study_overrides(args), args.seeds, out, ablation, deep=not args.no_deep,
                             previous=args.previous)
    return _publish(out, "table2.md", comparison_markdown(summary, command_line()), summary, "comparison.json")


def cmd_multilabel(args: argparse.Namespace) -> int:
    """`deeppneumonia multilabel`: CAN against a sigmoid baseline, per-finding AUROC with CIs."""
    from deeppneumonia.studies.multilabel import multilabel_markdown, run_multilabel_comparison

    out = Path(args.out)
    summary = run_multilabel_comparison(args.config, _study_overrides(args), args.seeds, out, args.n_boot)
    return _publish(out, "multilabel.md", multilabel_markdown(summary, command_line()), summary, "multilabel.json")


def cmd_localize(args: argparse.Namespace) -> int:
    """`deeppneumonia localize`: IAM against Grad-CAM/CAM baselines on the boxed test images."""
    from deeppneumonia.studies.localization import localization_markdown, reference_study, run_localization

    out = Path(args.out)
    if args.references_only:
        if args.baseline or args.guided or args.no_iam:
            raise ConfigError("--references-only reads no model: drop --baseline, --guided and --no-iam")
        summary = reference_study(args.config, _study_overrides(args), out)
        return _publish(out, "references.md", localization_markdown(summary, command_line()))
    summary = run_localization(args.config, _study_overrides(args), out, args.baseline, args.guided,
                               iam=not args.no_iam)
    return _publish(out, "localization.md", localization_markdown(summary, command_line()))


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add this module's commands to the ``deeppneumonia`` parser."""
    p = sub.add_parser("ablate", help="the paper's Table I: five rows x seeds on one patient split, markdown table")
    add_config_args(p, default="siim-cpu")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default: 0 1 2)")
    p.add_argument("--out", default="runs/ablation", help="output folder (default: runs/ablation)")
    p.add_argument("--rows", type=int, nargs="+", default=None, choices=range(1, 6),
                   help="rows to run (default all); finished rows of other invocations still enter the table")
    p.add_argument("--record", type=Path, default=None,
                   help="folder for one small JSON per finished (seed, row), meant to be committed; recorded rows are "
                        "not run again")
    p.set_defaults(func=cmd_ablate)

    p = sub.add_parser("compare", help="the paper's Table II: classical and deep baselines on the same split")
    add_config_args(p, default="siim-cpu")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default: 0 1 2)")
    p.add_argument("--out", default="runs/compare", help="output folder (default: runs/compare)")
    p.add_argument("--ablation", type=Path, default=None, help="ablation.json whose rows 1 and 5 fill ResNet18/full")
    p.add_argument("--no-deep", action="store_true", help="classical models only (skip VGG16/ResNet50)")
    p.add_argument("--previous", type=Path, default=None,
                   help="an earlier comparison.json of the same data and test part: its rows are reused, not re-run")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("multilabel", help="CAN against the plain sigmoid classifier: per-finding AUROC with CIs")
    add_config_args(p, default="nih-multilabel-cpu")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (default: 0)")
    p.add_argument("--out", default="runs/multilabel", help="output folder (default: runs/multilabel)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of patients for the CIs")
    p.set_defaults(func=cmd_multilabel)

    p = sub.add_parser("localize", help="IAM (with/without MSA) vs Grad-CAM of ResNet18 and Deep Pneumonia: T(IoU), "
                       "pointing game on the boxed test images")
    add_config_args(p, default="siim-ablation-cpu")
    p.add_argument("--out", default="runs/localize", help="output folder (default: runs/localize)")
    p.add_argument("--baseline", type=Path, default=None, help="a ResNet18 model.safetensors of the same split "
                   "(Table I row 1) instead of training one")
    p.add_argument("--guided", type=Path, default=None, help="a Deep Pneumonia model.safetensors of the same split "
                   "(Table I row 5) instead of training one")
    p.add_argument("--no-iam", action="store_true", help="leave out the two IAM models (with --baseline and --guided "
                   "nothing is trained: Grad-CAM and MGACR map+ against the references, and the occlusion test)")
    p.add_argument("--references-only", action="store_true", help="only the rows no model needs: the centre prior "
                   "and the box oracles at each grid (references.md)")
    p.set_defaults(func=cmd_localize)
