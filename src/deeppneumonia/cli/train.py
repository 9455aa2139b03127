"""`deeppneumonia pretrain | train | run`: Stage I, Stage II, or the whole job."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from deeppneumonia.cli.common import add_config_args, load_cli_config, print_json

if TYPE_CHECKING:
    from deeppneumonia.config import Config
    from deeppneumonia.training.loop import FitResult


def _kept(cfg: Config, result: FitResult) -> str:
    """Which Stage I encoder was kept, in words (``pretrain.select``)."""
    if cfg.pretrain.select == "last":
        return f"kept the last epoch ({result.best_epoch})"
    return f"kept epoch {result.best_epoch} (best {cfg.pretrain.select} {abs(result.best):.4f})"


def cmd_pretrain(args: argparse.Namespace) -> int:
    """`deeppneumonia pretrain`: Stage I (SimCLR) alone."""
    from deeppneumonia.training.pipeline import run_pretrain

    cfg = load_cli_config(args)
    result = run_pretrain(cfg)
    print(f"Stage I done: {_kept(cfg, result)}; encoder in "
          f"{Path(cfg.run.out_dir) / 'pretrain' / 'encoder.safetensors'}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """`deeppneumonia train`: Stage II alone (uses the run's Stage I encoder when train.pretrained)."""
    from deeppneumonia.training.pipeline import run_train

    cfg = load_cli_config(args)
    print_json("test metrics (held-out patients):", run_train(cfg))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Both stages (Stage I skipped when train.pretrained is false), then the test part's metrics and HTML report."""
    from deeppneumonia.data.sources import resolve_data_path
    from deeppneumonia.data.summary import format_summary, summarize
    from deeppneumonia.runtime import distributed
    from deeppneumonia.training.pipeline import prepare_data, run_pretrain, run_train

    cfg = load_cli_config(args)
    data = prepare_data(cfg, cfg.run.progress)
    say = print if distributed.is_main() else (lambda *a, **k: None)  # under torchrun: rank 0 speaks
    say(format_summary(summarize(data.manifest, decode=False, progress=False), max_problems=10))
    say(f"\nsplit by patient: train {len(data.train)}, val {len(data.val)}, test {len(data.test)} images\n")
    if cfg.train.pretrained and not cfg.train.encoder:
        result = run_pretrain(cfg, data)
        say(f"Stage I (SimCLR): {_kept(cfg, result)}, {result.seconds / 60:.1f} min")
    metrics = run_train(cfg, data)
    say(f"Stage II done: best epoch {metrics.get('best_epoch')}, {metrics.get('train_minutes')} min "
        f"(all test metrics in {Path(cfg.run.out_dir) / 'test_metrics.json'})")
    if not distributed.is_main() or not len(data.test):
        return 0
    from deeppneumonia.evaluation.runner import evaluate_checkpoint, format_metrics

    run_dir = Path(cfg.run.out_dir).expanduser()
    res = evaluate_checkpoint(run_dir / "train" / "model.safetensors", resolve_data_path(cfg.data.path),
                              run_dir / "evaluation", cfg.data.source, "test", cfg.data.cache_dir, n_boot=args.n_boot,
                              device=cfg.run.device, progress=False)
    say("\nHeld-out test patients (never seen in training):\n" + format_metrics(res.metrics))
    say(f"\nrun folder: {run_dir}\nreport (open in a browser): {(res.out_dir / 'report.html').resolve()}")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    """Print the resolved config (preset + overrides) as YAML, exactly what a run would use and save."""
    import json

    import yaml

    from deeppneumonia.config import load_config

    cfg = load_config(args.config, list(args.overrides))
    print(yaml.safe_dump(json.loads(json.dumps(cfg.to_dict())), sort_keys=False), end="")
    return 0


def cmd_config_list(args: argparse.Namespace) -> int:
    """`deeppneumonia config presets`: the names of the shipped presets."""
    from deeppneumonia.config import preset_names

    print("\n".join(preset_names()))
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add this module's commands to the ``deeppneumonia`` parser."""
    config = sub.add_parser("config", help="show the resolved configuration, list the presets").add_subparsers(
        dest="config_cmd", required=True)
    p = config.add_parser("show", help="print the resolved config (preset + overrides) as YAML")
    add_config_args(p)
    p.set_defaults(func=cmd_config_show)
    p = config.add_parser("presets", help="list the shipped presets")
    p.set_defaults(func=cmd_config_list)
    p = sub.add_parser("pretrain", help="Stage I: SimCLR pre-training of the encoder on the training images")
    add_config_args(p)
    p.set_defaults(func=cmd_pretrain)
    p = sub.add_parser("train", help="Stage II: supervised training (MGACR + class-balanced focal loss)")
    add_config_args(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("run", help="the whole job: inspect, cache, Stage I, Stage II, test metrics, HTML report")
    add_config_args(p)
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of patients for the report's CIs")
    p.set_defaults(func=cmd_run)
