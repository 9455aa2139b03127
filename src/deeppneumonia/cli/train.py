"""`deeppneumonia pretrain | train | run`: Stage I, Stage II, or the whole job."""

from __future__ import annotations

import argparse
from pathlib import Path

from deeppneumonia.cli.common import add_config_args, load_cli_config, print_json


def cmd_pretrain(args: argparse.Namespace) -> int:
    from deeppneumonia.training.pipeline import run_pretrain

    cfg = load_cli_config(args)
    result = run_pretrain(cfg)
    print(f"Stage I done: best {result.best:.4f} at epoch {result.best_epoch}; encoder in "
          f"{Path(cfg.run.out_dir) / 'pretrain' / 'encoder.safetensors'}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from deeppneumonia.training.pipeline import run_train

    cfg = load_cli_config(args)
    print_json("test metrics (held-out patients):", run_train(cfg))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Both stages (Stage I skipped when train.pretrained is false), then test metrics."""
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
        say(f"Stage I (SimCLR): best {result.best:.4f} at epoch {result.best_epoch}, {result.seconds / 60:.1f} min")
    print_json("Stage II done. Test metrics (held-out patients):", run_train(cfg, data))
    say(f"\nrun folder: {cfg.run.out_dir}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("pretrain", help="Stage I: SimCLR pre-training of the encoder on the training images")
    add_config_args(p)
    p.set_defaults(func=cmd_pretrain)
    p = sub.add_parser("train", help="Stage II: supervised training (MGACR + class-balanced focal loss)")
    add_config_args(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("run", help="the whole job: inspect, cache, Stage I, Stage II, test metrics")
    add_config_args(p)
    p.set_defaults(func=cmd_run)
