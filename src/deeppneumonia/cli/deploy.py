"""`deeppneumonia predict | export | serve`: use a trained model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deeppneumonia.errors import ConfigError, DeepPneumoniaError

CAM_METHODS = ("gradcam", "gradcam++", "hirescam", "eigencam", "layercam")  # = inference.explain.METHODS
PRECISIONS = ("fp32", "bf16", "auto")
PRECISION_HELP = ("PyTorch autocast: fp32 (default, the reference), bf16, or auto (bf16 where the CPU or GPU has it; "
                  "about 1.5-2.6x faster there, probabilities within ~1e-2)")


def cmd_predict(args: argparse.Namespace) -> int:
    """`deeppneumonia predict`: probabilities for files and folders, as CSV or JSON (optionally with heatmaps)."""
    from deeppneumonia.cli.common import require_dicom_if_needed
    from deeppneumonia.extras import require
    from deeppneumonia.inference.files import check_output, predict_paths, write_predictions

    if args.heatmaps is not None:
        require("pytorch_grad_cam", "matplotlib")
    require_dicom_if_needed(args.paths)
    check_output(args.out)  # before any work: a bad --out must not cost the whole run
    rows = predict_paths(args.checkpoint, args.paths, args.heatmaps, args.device, progress=not args.quiet,
                         layer=args.layer, method=args.method, batch_size=args.batch_size, runtime=args.runtime,
                         precision=args.precision)
    write_predictions(rows, args.out, args.format)
    bad = [r for r in rows if r.get("error")]
    print(f"{len(rows) - len(bad)} predicted, {len(bad)} skipped (reported in {args.out or 'the output'})",
          file=sys.stderr)
    if not rows:
        print("error: no file found under the given paths", file=sys.stderr)
        return 2
    return 2 if len(bad) == len(rows) else 0


def cmd_export(args: argparse.Namespace) -> int:
    """`deeppneumonia export`: write the inference network as ONNX and check parity with PyTorch (int8 optional)."""
    from deeppneumonia.extras import require
    from deeppneumonia.inference.export import export_int8, export_onnx

    require("onnx", "onnxruntime")
    if args.quantize == "int8":
        if args.calibration is None:
            raise ConfigError("--quantize int8 needs --calibration: a data set's cache folder (with images.npy) or "
                              "a folder of images to calibrate the activation ranges on")
        r = export_int8(args.checkpoint, args.out, args.calibration, args.labelled, args.with_features)
        print(f"wrote {r['fp32']} (fp32) and {r['int8']} (int8, + .json metadata, .parity.json report)")
        line = (f"int8 vs fp32 on {r['parity_on']} ({r['images']} images): max |prob diff| {r['max_abs_prob_diff']:.4f}, "
                f"most probable class agrees on {100 * r['class_agreement']:.1f} %, decided class on "
                f"{100 * r['decision_agreement']:.1f} %")
        if "auroc_fp32" in r:
            line += f", AUROC fp32 {r['auroc_fp32']:.4f} int8 {r['auroc_int8']:.4f} (diff {r['auroc_diff']:+.4f})"
        print(line)
        return 0
    report = export_onnx(args.checkpoint, args.out, args.with_features)
    print(f"wrote {args.out} (+ .json metadata); parity with PyTorch: max |diff| {report['max_abs_diff']:.2e} "
          f"<= {report['atol']}")
    return 0


def validate_serve_args(args: argparse.Namespace) -> None:
    """One-line errors for out-of-range serve options (before the model is loaded)."""
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port}: a TCP port is 0..65535 (0 picks a free one)")
    for name in ("max_upload_mb", "max_pixels", "max_concurrency", "max_batch", "body_timeout"):
        v = getattr(args, name, None)
        if v is not None and not v > 0:
            raise ConfigError(f"--{name.replace('_', '-')} {v}: must be greater than 0")
    if args.max_wait_ms is not None and not 0 <= args.max_wait_ms <= 1000:
        raise ConfigError(f"--max-wait-ms {args.max_wait_ms}: must be between 0 and 1000")


def cmd_serve(args: argparse.Namespace) -> int:
    """`deeppneumonia serve`: the web page and HTTP API for one model."""
    from deeppneumonia.extras import as_missing_extra, require

    validate_serve_args(args)
    require("fastapi", "uvicorn")
    try:
        from deeppneumonia.serve import app as serve
    except ImportError as exc:
        raise (as_missing_extra(exc) or DeepPneumoniaError(f"serving: {exc}")) from exc
    limits = {k: getattr(args, k) for k in ("max_upload_mb", "max_pixels", "max_concurrency", "max_batch",
                                            "max_wait_ms", "body_timeout") if getattr(args, k) is not None}
    serve.run(args.checkpoint, host=args.host, port=args.port, heatmap=not args.no_heatmap, device=args.device,
              layer=args.layer, method=args.method, runtime=args.runtime, precision=args.precision, **limits)
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add this module's commands to the ``deeppneumonia`` parser."""
    p = sub.add_parser("predict", help="predict files, folders and DICOM; CSV or JSON out")
    p.add_argument("--checkpoint", type=Path, required=True, help="a model.safetensors, or an exported model.onnx")
    p.add_argument("paths", nargs="+", type=Path, help="image files or folders (searched recursively)")
    p.add_argument("--out", type=Path, default=None, help="output file (default: standard output)")
    p.add_argument("--format", choices=["csv", "json"], default="csv", help="output format")
    p.add_argument("--heatmaps", type=Path, default=None, help="also write CAM overlays into this folder")
    p.add_argument("--method", choices=CAM_METHODS, default="gradcam", help="CAM method for --heatmaps")
    p.add_argument("--layer", default="layer4", help="CAM layer for --heatmaps")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default 16)")
    p.add_argument("--runtime", choices=["torch", "onnxruntime"], default="torch",
                   help="run a .safetensors checkpoint with PyTorch, or export it first and run ONNX Runtime")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help=PRECISION_HELP)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="export the inference network (ONNX) with a parity check; int8 optional")
    p.add_argument("--checkpoint", type=Path, required=True, help="a model.safetensors")
    p.add_argument("--format", choices=["onnx"], default="onnx", help="export format")
    p.add_argument("--out", type=Path, default=Path("model.onnx"), help="the fp32 .onnx (int8: beside it, .int8.onnx)")
    p.add_argument("--with-features", action="store_true", help="also output the last stage's activations (CAM)")
    p.add_argument("--quantize", choices=["int8"], default=None,
                   help="also write a static int8 (QDQ, per-channel) model calibrated on --calibration")
    p.add_argument("--calibration", type=Path, default=None,
                   help="int8: a cache folder (images.npy) or a folder of images for the activation ranges")
    p.add_argument("--labelled", type=Path, default=None,
                   help="int8: a folder with one sub-folder per class; the parity report adds AUROC fp32 vs int8")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("serve", help="web page and HTTP API for one model (FastAPI; needs the serve extra)")
    p.add_argument("--checkpoint", type=Path, required=True, help="a model.safetensors, or an exported model.onnx")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--max-upload-mb", type=float, default=None, help="largest accepted upload in MiB (default 32)")
    p.add_argument("--max-pixels", type=int, default=None, help="largest accepted width x height (default 40e6)")
    p.add_argument("--max-concurrency", type=int, default=None,
                   help="request bodies read and decoded at once; bounds memory (default 4)")
    p.add_argument("--max-batch", type=int, default=None, help="requests coalesced into one forward pass (default 16)")
    p.add_argument("--max-wait-ms", type=float, default=None,
                   help="how long a forward pass waits for more requests to join it (default 5)")
    p.add_argument("--body-timeout", type=float, default=None,
                   help="seconds allowed to receive a request body (default 30); 408 beyond")
    p.add_argument("--runtime", choices=["torch", "onnxruntime"], default="torch",
                   help="run a .safetensors checkpoint with PyTorch, or export it at start-up and run ONNX Runtime "
                        "(faster on CPU; layer4 Grad-CAM only)")
    p.add_argument("--no-heatmap", action="store_true", help="no CAM overlays or boxes")
    p.add_argument("--method", choices=CAM_METHODS, default="gradcam", help="CAM method of the overlays")
    p.add_argument("--layer", default="layer4", help="CAM layer of the overlays")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help=PRECISION_HELP)
    p.set_defaults(func=cmd_serve)
