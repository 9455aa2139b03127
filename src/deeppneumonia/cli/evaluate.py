"""`deeppneumonia evaluate | explain | probe`: judge a model or an encoder, and show where it looks."""

from __future__ import annotations

import argparse
from pathlib import Path

from deeppneumonia.cli.common import DEFAULT_CACHE, require_dicom_if_needed


def cmd_evaluate(args: argparse.Namespace) -> int:
    """`deeppneumonia evaluate`: metrics with CIs, predictions.csv and report.html; prints the report's path."""
    from deeppneumonia.data.sources import resolve_data_path
    from deeppneumonia.evaluation.runner import evaluate_checkpoint, format_metrics

    out = args.out or args.checkpoint.resolve().parent.parent / "evaluation"
    res = evaluate_checkpoint(args.checkpoint, resolve_data_path(str(args.data)), out, args.source, args.split,
                              args.cache_dir, args.n_boot, args.layer, device=args.device, progress=not args.quiet)
    print(format_metrics(res.metrics))
    print(f"report: {res.out_dir / 'report.html'}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    """`deeppneumonia explain`: Grad-CAM overlays (PNG) for images; exit 2 when none could be read."""
    from deeppneumonia.extras import require
    from deeppneumonia.inference.files import predict_paths

    require("pytorch_grad_cam", "matplotlib")
    require_dicom_if_needed(args.images)

    if args.mgacr_layer is not None:  # MGACR's own map+ (heads kept for analysis) instead of a CAM
        from deeppneumonia.evaluation.attention_maps import explain_map_plus

        rows = explain_map_plus(args.checkpoint, args.images, args.mgacr_layer, args.out, args.device)
    else:
        rows = predict_paths(args.checkpoint, args.images, heatmaps=args.out, device=args.device, progress=False,
                             explain_class=args.cls, layer=args.layer, method=args.method)
    for row in rows:
        if row["error"]:
            print(f"{row['path']}: skipped: {row['error']}")
            continue
        probs = ", ".join(f"{k[2:]} {v:.3f}" for k, v in row.items() if k.startswith("p_"))
        print(f"{row['path']}: {probs} -> {row['heatmap']}")
    return 0 if any(not r["error"] for r in rows) else 2


def cmd_probe(args: argparse.Namespace) -> int:
    """`deeppneumonia probe`: kNN and linear-probe accuracy of Stage I encoders against random ones."""
    from deeppneumonia.data.sources import resolve_data_path
    from deeppneumonia.evaluation.probe import probe_encoders

    res = probe_encoders(args.encoder, resolve_data_path(str(args.data)), args.source, args.cache_dir, args.device,
                         on=args.on, n_boot=args.n_boot, linear_c=args.linear_c)

    def diffs(d: dict[str, tuple[float, float, float]]) -> str:
        return ", ".join(f"{k} {m:+.3f} [{lo:+.3f}, {hi:+.3f}]" for k, (m, lo, hi) in d.items())

    print(f"train {res['train_images']} / {res['scored_on']} {res['scored_images']} images (patient-disjoint)")
    for row in res["encoders"]:
        if len(res["encoders"]) > 1:
            print(row["encoder"])
        for name in ("pretrained", "random_init"):
            print(f"{name:>12}: " + ", ".join(f"{k} {v:.3f}" for k, v in row[name].items()))
        print(f" difference: {diffs(row['difference'])} (pre-trained minus random; 95 % patient bootstrap)")
    if "pooled" in res:
        print(f"     pooled: {diffs(res['pooled'])} (mean over {len(res['encoders'])} encoders, each against its own "
              "random init; 95 % bootstrap over encoders and patients)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add this module's commands to the ``deeppneumonia`` parser."""
    p = sub.add_parser("probe", help="judge Stage I encoders alone: kNN and linear-probe accuracy")
    p.add_argument("--encoder", type=Path, nargs="+", required=True,
                   help="one or more pretrain/encoder.safetensors (several: Stage I seeds on one split, pooled)")
    p.add_argument("--data", type=Path, required=True, help="data folder, CSV, or sample:NAME to probe on")
    p.add_argument("--source", default="auto", help="data layout (default: detect)")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="preprocessing cache folder")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--on", default="val", choices=["val", "test"],
                   help="the run's patients to score on (default: val; the test part is for the final numbers)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of patients for the difference's CI")
    p.add_argument("--linear-c", type=float, default=None,
                   help="the linear probe's inverse L2 strength (default: chosen by 5-fold cross-validation over "
                        "the training patients)")
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("evaluate", help="metrics with CIs, predictions.csv and an HTML report for a checkpoint")
    p.add_argument("--checkpoint", type=Path, required=True, help="a model.safetensors")
    p.add_argument("--data", type=Path, required=True, help="data folder, CSV, or sample:NAME")
    p.add_argument("--source", default="auto", help="data layout (default: detect)")
    p.add_argument("--split", default="auto", choices=["auto", "test", "val", "train", "all"],
                   help="auto: the run's held-out test patients when the data is the run's, else all images")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: RUN/evaluation)")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="preprocessing cache folder")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of patients for the CIs")
    p.add_argument("--layer", default="layer4", help="Grad-CAM layer (default: layer4)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("explain", help="CAM overlays (PNG) for images (Grad-CAM by default)")
    p.add_argument("--checkpoint", type=Path, required=True, help="a model.safetensors")
    p.add_argument("images", nargs="+", type=Path, help="image files (PNG, JPEG, DICOM) or folders")
    p.add_argument("--class", dest="cls", default=None, help="class to explain (default: the predicted one)")
    p.add_argument("--layer", default="layer4", help="CAM layer (default layer4: exact CAM from the forward pass)")
    p.add_argument("--method", choices=["gradcam", "gradcam++", "hirescam", "eigencam", "layercam"],
                   default="gradcam", help="CAM method (pytorch-grad-cam; gradcam at layer4 needs no backward pass)")
    p.add_argument("--out", type=Path, default=Path("explanations"), help="folder for the overlays (default: explanations)")
    p.add_argument("--mgacr-layer", type=int, choices=[1, 2, 3, 4], default=None,
                   help="draw MGACR's map+ of this residual layer instead of a CAM (needs mgacr_heads.safetensors "
                        "beside the checkpoint: train.keep_attention_heads=true)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.set_defaults(func=cmd_explain)
