"""Command line: parses arguments and calls the library. No logic lives here."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from deeppneumonia.errors import ConfigError, DeepPneumoniaError

log = logging.getLogger("deeppneumonia")

DEFAULT_CACHE = Path.home() / ".cache" / "deeppneumonia"


def _add_source_args(p: argparse.ArgumentParser) -> None:
    from deeppneumonia.data.sources import SOURCE_KINDS

    p.add_argument("path", type=Path, help="data folder or generic CSV file")
    p.add_argument("--source", default="auto", choices=SOURCE_KINDS, help="layout (default: detect)")
    p.add_argument("--strict", action="store_true", help="stop at the first bad file or row instead of skipping")
    p.add_argument("--patient-regex", default=None, help="class-per-folder: regex whose first group is the patient")


def _cmd_data_inspect(args: argparse.Namespace) -> int:
    from deeppneumonia.data.sources import load_source
    from deeppneumonia.data.summary import format_summary, summarize

    manifest = load_source(args.path, args.source, strict=args.strict, patient_regex=args.patient_regex)
    summary = summarize(manifest, decode=not args.no_decode, progress=not args.quiet)
    print(format_summary(summary, max_problems=args.max_problems))
    if args.json:
        args.json.write_text(json.dumps(summary.to_dict(), indent=1))
        print(f"\nfull report: {args.json}")
    return 0


def _cmd_data_prepare(args: argparse.Namespace) -> int:
    from deeppneumonia.data.cache import build_cache
    from deeppneumonia.data.sources import load_source

    manifest = load_source(args.path, args.source, strict=args.strict, patient_regex=args.patient_regex)
    cache = build_cache(manifest, args.size, args.cache_dir, args.resize, args.workers, progress=not args.quiet)
    n_bad = int((~cache.valid).sum())
    print(f"cache: {cache.path}\nimages: {int(cache.valid.sum())} ready at {args.size}px ({args.resize}), "
          f"{n_bad} skipped; {len(manifest.problems)} problem(s) in total (see `deeppneumonia data inspect`)")
    return 0


def _config(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from deeppneumonia.config import load_config

    overrides = list(args.overrides)
    if args.quiet:
        overrides.append("run.progress=false")
    return load_config(args.config, overrides)


def _print_json(title: str, data: object) -> None:
    from deeppneumonia import distributed

    if not distributed.is_main():
        return
    print(f"{title}\n{json.dumps(data, indent=1, default=str)}")


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from deeppneumonia.pipeline import run_pretrain

    cfg = _config(args)
    result = run_pretrain(cfg)
    print(f"Stage I done: best {result.best:.4f} at epoch {result.best_epoch}; encoder in "
          f"{Path(cfg.run.out_dir) / 'pretrain' / 'encoder.safetensors'}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from deeppneumonia.pipeline import run_train

    cfg = _config(args)
    _print_json("test metrics (held-out patients):", run_train(cfg))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    """Both stages (Stage I skipped when train.pretrained is false), then test metrics."""
    from deeppneumonia import distributed
    from deeppneumonia.data.summary import format_summary, summarize
    from deeppneumonia.pipeline import prepare_data, run_pretrain, run_train

    cfg = _config(args)
    data = prepare_data(cfg, cfg.run.progress)
    say = print if distributed.is_main() else (lambda *a, **k: None)  # under torchrun: rank 0 speaks
    say(format_summary(summarize(data.manifest, decode=False, progress=False), max_problems=10))
    say(f"\nsplit by patient: train {len(data.train)}, val {len(data.val)}, test {len(data.test)} images\n")
    if cfg.train.pretrained and not cfg.train.encoder:
        result = run_pretrain(cfg, data)
        say(f"Stage I (SimCLR): best {result.best:.4f} at epoch {result.best_epoch}, {result.seconds / 60:.1f} min")
    _print_json("Stage II done. Test metrics (held-out patients):", run_train(cfg, data))
    say(f"\nrun folder: {cfg.run.out_dir}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from deeppneumonia.evaluation.runner import evaluate_checkpoint
    from deeppneumonia.pipeline import resolve_data_path

    out = args.out or args.checkpoint.resolve().parent.parent / "evaluation"
    res = evaluate_checkpoint(args.checkpoint, resolve_data_path(str(args.data)), out, args.source, args.split,
                              args.cache_dir, args.n_boot, args.layer, device=args.device, progress=not args.quiet)
    m = res.metrics
    keys = ("accuracy", "balanced_accuracy", "macro_f1", "auroc_macro", "map", "ece")
    print(f"{m['images']} images of {m['patients']} patients ({m['split']} split)")
    for level in ("image", "study"):
        if level in m:
            ci = m[level].get("ci", {})
            cells = []
            for k in keys:
                v = m[level].get(k)
                if v is None:
                    continue
                lo_hi = ci.get(k)
                cells.append(f"{k} {v:.3f}" + (f" [{lo_hi[0]:.3f}, {lo_hi[1]:.3f}]" if lo_hi and lo_hi[0] is not None
                                                else ""))
            print(f"{level:>6}: " + ", ".join(cells))
    print(f"report: {res.out_dir / 'report.html'}")
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from deeppneumonia.data.cache import resize_image
    from deeppneumonia.data.imageio import read_image
    from deeppneumonia.explain import gradcam, overlay
    from deeppneumonia.predictor import Predictor

    pred = Predictor.from_checkpoint(args.checkpoint, args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    for path in args.images:
        pixels = read_image(path).pixels
        x = pred.preprocess(pixels)
        probs = pred.probabilities(x)[0]
        cls = pred.classes.index(args.cls) if args.cls else int(probs.argmax())
        heat = gradcam(pred.model, x, cls, args.layer)[0]
        small = resize_image(pixels, pred.size, pred.meta["preprocessing"]["resize"])
        pic = overlay(small, heat, caption=f"{pred.classes[cls]} {probs[cls]:.2f}")
        target = args.out / f"{Path(path).stem}_gradcam.png"
        pic.save(target)
        print(f"{path}: " + ", ".join(f"{c} {p:.3f}" for c, p in zip(pred.classes, probs, strict=True))
              + f" -> {target}")
    return 0


def _cmd_ablate(args: argparse.Namespace) -> int:
    from deeppneumonia.experiments import ablation_markdown, run_ablation

    overrides = list(args.overrides) + (["run.progress=false"] if args.quiet else [])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = run_ablation(args.config, overrides, args.seeds, out)
    command = "deeppneumonia " + " ".join(sys.argv[1:])
    table = ablation_markdown(summary, command)
    (out / "table1.md").write_text(table)
    print(table)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from deeppneumonia.experiments import comparison_markdown, run_comparison

    overrides = list(args.overrides) + (["run.progress=false"] if args.quiet else [])
    if args.ablation and not args.ablation.is_file():  # checked before hours of training, not after
        raise ConfigError(f"--ablation {args.ablation}: no such file (it is written by `deeppneumonia ablate`)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ablation = json.loads(args.ablation.read_text()) if args.ablation else None
    if args.previous is not None and not args.previous.is_file():
        raise ConfigError(f"--previous {args.previous}: no such file (a comparison.json of `deeppneumonia compare`)")
    summary = run_comparison(args.config, overrides, args.seeds, out, ablation, deep=not args.no_deep,
                             previous=args.previous)
    table = comparison_markdown(summary, "deeppneumonia " + " ".join(sys.argv[1:]))
    (out / "table2.md").write_text(table)
    print(table)
    return 0


def _cmd_multilabel(args: argparse.Namespace) -> int:
    from deeppneumonia.experiments import multilabel_markdown, run_multilabel_comparison

    overrides = list(args.overrides) + (["run.progress=false"] if args.quiet else [])
    out = Path(args.out)
    summary = run_multilabel_comparison(args.config, overrides, args.seeds, out, args.n_boot)
    table = multilabel_markdown(summary, "deeppneumonia " + " ".join(sys.argv[1:]))
    (out / "multilabel.md").write_text(table)
    print(table)
    return 0


def _cmd_localize(args: argparse.Namespace) -> int:
    from deeppneumonia.localization_study import localization_markdown, run_localization

    overrides = list(args.overrides) + (["run.progress=false"] if args.quiet else [])
    out = Path(args.out)
    summary = run_localization(args.config, overrides, out, args.baseline, args.guided)
    table = localization_markdown(summary, "deeppneumonia " + " ".join(sys.argv[1:]))
    (out / "localization.md").write_text(table)
    print(table)
    return 0


def _cmd_probe(args: argparse.Namespace) -> int:
    from deeppneumonia.evaluation.probe import probe_encoder
    from deeppneumonia.pipeline import resolve_data_path

    res = probe_encoder(args.encoder, resolve_data_path(str(args.data)), args.source, args.cache_dir, args.device)
    print(f"train {res['train_images']} / test {res['test_images']} images (patient-disjoint)")
    for name in ("pretrained", "random_init"):
        print(f"{name:>12}: " + ", ".join(f"{k} {v:.3f}" for k, v in res[name].items()))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from deeppneumonia.export import export_onnx

    report = export_onnx(args.checkpoint, args.out, args.with_features)
    print(f"wrote {args.out} (+ .json metadata); parity with PyTorch: max |diff| {report['max_abs_diff']:.2e} "
          f"<= {report['atol']}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from deeppneumonia.predict import predict_paths, write_predictions

    rows = predict_paths(args.checkpoint, args.paths, args.heatmaps, args.device, progress=not args.quiet)
    write_predictions(rows, args.out, args.format)
    bad = [r for r in rows if r.get("error")]
    print(f"{len(rows) - len(bad)} predicted, {len(bad)} skipped (reported in {args.out or 'the output'})",
          file=sys.stderr)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        from deeppneumonia import serve
    except ImportError as exc:
        raise DeepPneumoniaError(f"serving needs the serve extra ({exc.name} is missing): "
                                 "pip install 'deeppneumonia[serve]'") from exc
    limits = {k: getattr(args, k) for k in ("max_upload_mb", "max_pixels", "max_concurrency")
              if getattr(args, k) is not None}  # unset: serve's defaults
    serve.run(args.checkpoint, host=args.host, port=args.port, heatmap=not args.no_heatmap, device=args.device,
              **limits)
    return 0


def _add_config_args(p: argparse.ArgumentParser, default: str = "quick") -> None:
    p.add_argument("--config", "-c", default=default, help=f"preset name or YAML path (default: {default})")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.optim.epochs=5 data.size=224")


def build_parser() -> argparse.ArgumentParser:
    from deeppneumonia import __version__

    parser = argparse.ArgumentParser(prog="deeppneumonia", description=__doc__)
    parser.add_argument("--version", action="version", version=f"deeppneumonia {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="inspect and prepare data sets").add_subparsers(dest="data_cmd",
                                                                                      required=True)
    p = data.add_parser("inspect", help="counts, sizes, formats and every problem in a data set")
    _add_source_args(p)
    p.add_argument("--no-decode", action="store_true", help="read headers only (fast; misses truncated files)")
    p.add_argument("--json", type=Path, default=None, help="also write the full report as JSON")
    p.add_argument("--max-problems", type=int, default=50, help="problems to print (all go to --json)")
    p.set_defaults(func=_cmd_data_inspect)

    p = data.add_parser("prepare", help="build the preprocessing cache (decode once, resize, memory-map)")
    _add_source_args(p)
    p.add_argument("--size", type=int, default=224, help="working size in pixels (square)")
    p.add_argument("--resize", default="squash", choices=["squash", "letterbox"])
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: all cores)")
    p.set_defaults(func=_cmd_data_prepare)

    p = sub.add_parser("pretrain", help="Stage I: SimCLR pre-training of the encoder on the training images")
    _add_config_args(p)
    p.set_defaults(func=_cmd_pretrain)
    p = sub.add_parser("train", help="Stage II: supervised training (MGACR + class-balanced focal loss)")
    _add_config_args(p)
    p.set_defaults(func=_cmd_train)
    p = sub.add_parser("run", help="the whole job: inspect, cache, Stage I, Stage II, test metrics")
    _add_config_args(p)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("ablate", help="the paper's Table I: five rows x seeds on one patient split, markdown table")
    _add_config_args(p, default="siim-cpu")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default="runs/ablation")
    p.set_defaults(func=_cmd_ablate)

    p = sub.add_parser("compare", help="the paper's Table II: classical and deep baselines on the same split")
    _add_config_args(p, default="siim-cpu")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default="runs/compare")
    p.add_argument("--ablation", type=Path, default=None, help="ablation.json whose rows 1 and 5 fill ResNet18/full")
    p.add_argument("--no-deep", action="store_true", help="classical models only (skip VGG16/ResNet50)")
    p.add_argument("--previous", type=Path, default=None,
                   help="an earlier comparison.json of the same data and test part: its rows are reused, not re-run")
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("multilabel", help="CAN against the plain sigmoid classifier: per-finding AUROC with CIs")
    _add_config_args(p, default="nih-multilabel-cpu")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--out", default="runs/multilabel")
    p.add_argument("--n-boot", type=int, default=1000)
    p.set_defaults(func=_cmd_multilabel)

    p = sub.add_parser("localize", help="IAM (with/without MSA) vs Grad-CAM of ResNet18 and Deep Pneumonia: T(IoU), "
                       "pointing game on the boxed test images")
    _add_config_args(p, default="siim-ablation-cpu")
    p.add_argument("--out", default="runs/localize")
    p.add_argument("--baseline", type=Path, default=None, help="a ResNet18 model.safetensors of the same split "
                   "(Table I row 1) instead of training one")
    p.add_argument("--guided", type=Path, default=None, help="a Deep Pneumonia model.safetensors of the same split "
                   "(Table I row 5) instead of training one")
    p.set_defaults(func=_cmd_localize)

    p = sub.add_parser("probe", help="judge a Stage I encoder alone: kNN and linear-probe accuracy")
    p.add_argument("--encoder", type=Path, required=True, help="a pretrain/encoder.safetensors")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--source", default="auto")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cmd_probe)

    p = sub.add_parser("predict", help="predict files, folders and DICOM; CSV or JSON out")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("paths", nargs="+", type=Path, help="image files or folders (searched recursively)")
    p.add_argument("--out", type=Path, default=None, help="output file (default: standard output)")
    p.add_argument("--format", choices=["csv", "json"], default="csv")
    p.add_argument("--heatmaps", type=Path, default=None, help="also write Grad-CAM overlays into this folder")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("export", help="export the inference network (ONNX) with a parity check")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--format", choices=["onnx"], default="onnx")
    p.add_argument("--out", type=Path, default=Path("model.onnx"))
    p.add_argument("--with-features", action="store_true", help="also output the last stage's activations (CAM)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("serve", help="web page and HTTP API for one model (FastAPI; needs the serve extra)")
    p.add_argument("--checkpoint", type=Path, required=True, help="a model.safetensors")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-upload-mb", type=float, default=None, help="largest accepted upload in MiB (default 32)")
    p.add_argument("--max-pixels", type=int, default=None, help="largest accepted width x height (default 40e6)")
    p.add_argument("--max-concurrency", type=int, default=None, help="uploads decoded at once (default 4)")
    p.add_argument("--no-heatmap", action="store_true", help="no Grad-CAM overlays or boxes")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("evaluate", help="metrics with CIs, predictions.csv and an HTML report for a checkpoint")
    p.add_argument("--checkpoint", type=Path, required=True, help="a model.safetensors")
    p.add_argument("--data", type=Path, required=True, help="data folder, CSV, or sample:NAME")
    p.add_argument("--source", default="auto")
    p.add_argument("--split", default="auto", choices=["auto", "test", "val", "train", "all"],
                   help="auto: the run's held-out test patients when the data is the run's, else all images")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: RUN/evaluation)")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of patients for the CIs")
    p.add_argument("--layer", default="layer4", help="Grad-CAM layer")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("explain", help="Grad-CAM overlays (PNG) for images")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--class", dest="cls", default=None, help="class to explain (default: the predicted one)")
    p.add_argument("--layer", default="layer4")
    p.add_argument("--out", type=Path, default=Path("explanations"))
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cmd_explain)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.quiet = args.quiet or not sys.stderr.isatty()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except DeepPneumoniaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        from deeppneumonia import distributed

        distributed.cleanup()


if __name__ == "__main__":
    sys.exit(main())
