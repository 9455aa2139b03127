"""`deeppneumonia predict | export | serve`: use a trained model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deeppneumonia.errors import DeepPneumoniaError


def cmd_predict(args: argparse.Namespace) -> int:
    """`deeppneumonia predict`: probabilities for files and folders, as CSV or JSON (optionally with heatmaps)."""
    from deeppneumonia.cli.common import require_dicom_if_needed
    from deeppneumonia.extras import require
    from deeppneumonia.inference.files import predict_paths, write_predictions

    if args.heatmaps is not None:
        require("pytorch_grad_cam", "matplotlib")
    require_dicom_if_needed(args.paths)

    rows = predict_paths(args.checkpoint, args.paths, args.heatmaps, args.device, progress=not args.quiet)
    write_predictions(rows, args.out, args.format)
    bad = [r for r in rows if r.get("error")]
    print(f"{len(rows) - len(bad)} predicted, {len(bad)} skipped (reported in {args.out or 'the output'})",
          file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """`deeppneumonia export`: write the inference network as ONNX and check parity with PyTorch."""
    from deeppneumonia.extras import require
    from deeppneumonia.inference.export import export_onnx

    require("onnx", "onnxruntime")

    report = export_onnx(args.checkpoint, args.out, args.with_features)
    print(f"wrote {args.out} (+ .json metadata); parity with PyTorch: max |diff| {report['max_abs_diff']:.2e} "
          f"<= {report['atol']}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """`deeppneumonia serve`: the web page and HTTP API for one model."""
    from deeppneumonia.extras import as_missing_extra, require

    require("fastapi", "uvicorn")
    try:
        from deeppneumonia.serve import app as serve
    except ImportError as exc:
        raise (as_missing_extra(exc) or DeepPneumoniaError(f"serving: {exc}")) from exc
    limits = {k: getattr(args, k) for k in ("max_upload_mb", "max_pixels", "max_concurrency")
              if getattr(args, k) is not None}  # unset: serve's defaults
    serve.run(args.checkpoint, host=args.host, port=args.port, heatmap=not args.no_heatmap, device=args.device,
              **limits)
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add this module's commands to the ``deeppneumonia`` parser."""
    p = sub.add_parser("predict", help="predict files, folders and DICOM; CSV or JSON out")
    p.add_argument("--checkpoint", type=Path, required=True, help="a model.safetensors")
    p.add_argument("paths", nargs="+", type=Path, help="image files or folders (searched recursively)")
    p.add_argument("--out", type=Path, default=None, help="output file (default: standard output)")
    p.add_argument("--format", choices=["csv", "json"], default="csv", help="output format (default: csv)")
    p.add_argument("--heatmaps", type=Path, default=None, help="also write Grad-CAM overlays into this folder")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="export the inference network (ONNX) with a parity check")
    p.add_argument("--checkpoint", type=Path, required=True, help="a model.safetensors")
    p.add_argument("--format", choices=["onnx"], default="onnx", help="export format (only onnx)")
    p.add_argument("--out", type=Path, default=Path("model.onnx"), help="output file (default: model.onnx)")
    p.add_argument("--with-features", action="store_true", help="also output the last stage's activations (CAM)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("serve", help="web page and HTTP API for one model (FastAPI; needs the serve extra)")
    p.add_argument("--checkpoint", type=Path, required=True, help="a model.safetensors")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000)")
    p.add_argument("--max-upload-mb", type=float, default=None, help="largest accepted upload in MiB (default 32)")
    p.add_argument("--max-pixels", type=int, default=None, help="largest accepted width x height (default 40e6)")
    p.add_argument("--max-concurrency", type=int, default=None, help="uploads decoded at once (default 4)")
    p.add_argument("--no-heatmap", action="store_true", help="no Grad-CAM overlays or boxes")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.set_defaults(func=cmd_serve)
