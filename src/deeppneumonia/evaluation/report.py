"""The self-contained HTML report: metrics with CIs, plots, localization and a Grad-CAM gallery."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deeppneumonia.evaluation import plots
from deeppneumonia.evaluation.curves import curves, reliability
from deeppneumonia.inference.predictor import Predictor

CSS = """body{font-family:system-ui,sans-serif;margin:24px;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:8px 0 18px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.figs img{margin:4px;border:1px solid #ddd}
.gallery figure{display:inline-block;margin:4px}.gallery img{width:256px}
.note{color:#666;font-size:90%}"""


def _img(png: bytes, alt: str) -> str:
    """An inline ``<img>`` tag holding ``png`` as a base64 data URI."""
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _fmt(v: Any) -> str:
    """A table cell's text: ``–`` for None, 3 decimals for floats, else the HTML-escaped value."""
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3f}"
    return html.escape(str(v))


def _ci(ci: dict[str, Any], key: str) -> str:
    """The CI ``[lo, hi]`` of metric ``key`` as a note span, or an empty string when there is no finite interval."""
    lo_hi = ci.get(key)
    if not lo_hi or lo_hi[0] is None or (isinstance(lo_hi[0], float) and np.isnan(lo_hi[0])):
        return ""
    return f" <span class=note>[{lo_hi[0]:.3f}, {lo_hi[1]:.3f}]</span>"


def _summary_table(levels: dict[str, dict[str, Any]]) -> str:
    """HTML table of the headline metrics (with CIs) of each level (image, study)."""
    keys = ["accuracy", "balanced_accuracy", "macro_f1", "auroc_macro", "map", "ece"]
    head = "".join(f"<th>{k}</th>" for k in keys)
    rows = []
    for level, m in levels.items():
        cells = "".join(f"<td>{_fmt(m.get(k))}{_ci(m.get('ci', {}), k)}</td>" for k in keys if True)
        rows.append(f"<tr><td>{level} (n={m.get('n')})</td>{cells}</tr>")
    return f"<table><tr><th>level</th>{head}</tr>{''.join(rows)}</table>"


def _per_class(m: dict[str, Any]) -> str:
    """HTML table of the per-class metrics of one level."""
    keys = ["precision", "recall", "f1", "auroc", "ap", "support"]
    rows = "".join(f"<tr><td>{html.escape(c)}</td>{''.join(f'<td>{_fmt(v.get(k))}</td>' for k in keys)}</tr>"
                   for c, v in m.get("per_class", {}).items())
    return f"<table><tr><th>class</th>{''.join(f'<th>{k}</th>' for k in keys)}</tr>{rows}</table>"


def _localization(loc: dict[str, Any]) -> str:
    """HTML table of localization scores (overall and per box label), or a note when nothing was scored."""
    if not loc:
        return "<p class=note>No image of this split has lesion boxes: localization not scored.</p>"
    overall = loc.get("overall", loc)
    keys = [k for k in overall if k != "n"]
    rows = [f"<tr><td>all (n={overall.get('n')})</td>{''.join(f'<td>{_fmt(overall[k])}</td>' for k in keys)}</tr>"]
    for label, vals in loc.get("per_label", {}).items():
        rows.append(f"<tr><td>{html.escape(label)} (n={vals.get('n')})</td>"
                    f"{''.join(f'<td>{_fmt(vals.get(k))}</td>' for k in keys)}</tr>")
    return f"<table><tr><th>images</th>{''.join(f'<th>{k}</th>' for k in keys)}</tr>{''.join(rows)}</table>"


def _references_and_occlusion(result: dict[str, Any]) -> list[str]:
    """Centre-prior and oracle rows (what the map's grid allows) and the box-occlusion test with ROAD."""
    parts: list[str] = []
    for name, loc in result.get("localization_references", {}).items():
        parts += [f"<h3>Reference: {html.escape(name)} (grid {html.escape(str(loc.get('grid')))})</h3>",
                  _localization(loc)]
    if parts:
        parts.insert(0, "<p class=note>References from the boxes alone: the centre prior is one fixed Gaussian for "
                        "every image; the oracle is the box mask pooled to a map's grid and upsampled like CAM, "
                        "the best a map of that resolution can score.</p>")
    occ = result.get("occlusion")
    if occ and occ.get("n"):
        def ci(d: dict[str, Any]) -> str:
            """``mean [lo, hi]`` of a bootstrap summary."""
            return f"{_fmt(d.get('mean'))} [{_fmt(d.get('lo'))}, {_fmt(d.get('hi'))}]"

        road = occ.get("road", {})
        parts += ["<h2>Does the model look at the lesion? Box occlusion</h2>",
                  f"<p class=note>Drop in the true class's probability when the lesion boxes are filled "
                  f"({html.escape(str(occ.get('fill')))}) against the drop when boxes of the same shapes are filled "
                  f"elsewhere (random, seeded, not overlapping the lesions); paired per image, 95 % CI over patients. "
                  f"{occ['n']} items, {occ.get('skipped', 0)} skipped (no room for the control boxes). ROAD: "
                  "pytorch-grad-cam's ROADCombined of the Grad-CAM map (higher: the map ranks the pixels the model "
                  "uses).</p>",
                  "<table><tr><th>drop, lesion filled</th><th>drop, elsewhere</th><th>paired difference</th>"
                  "<th>lesion worse</th><th>ROAD</th></tr>"
                  f"<tr><td>{ci(occ['drop_lesion'])}</td><td>{ci(occ['drop_outside'])}</td>"
                  f"<td>{ci(occ['difference'])}</td><td>{_fmt(occ.get('lesion_worse_share'))}</td>"
                  f"<td>{ci(road) if road.get('n') else '–'} (n={road.get('n', 0)})</td></tr></table>"]
    return parts


def write_report(path: Path, result: dict[str, Any], pred: Predictor, probs: np.ndarray, targets: np.ndarray,
                 gallery: Sequence[tuple[str, Any]], run_dir: Path) -> None:
    """Write the self-contained HTML report of an evaluation to ``path``.

    Args:
        result: the evaluation result (metrics with CIs, localization, references, occlusion).
        probs: (N, C) probabilities and ``targets`` (N, C), for the curves and the reliability diagram.
        gallery: (name, PIL image) pairs of Grad-CAM overlays.
        run_dir: the training run whose ``metrics.jsonl`` files give the training curves.

    Figures are left out, with a note, when matplotlib is not installed.
    """
    classes = pred.classes
    parts = [f"<!doctype html><html><head><meta charset=utf-8><title>deeppneumonia evaluation</title>"
             f"<style>{CSS}</style></head><body><h1>Evaluation report</h1>",
             f"<p>checkpoint <code>{html.escape(result['checkpoint'])}</code><br>data <code>{html.escape(result['data'])}"
             f"</code>, split <b>{html.escape(result['split'])}</b>: {result['images']} images of {result['patients']} "
             f"patients.<br><span class=note>95 % confidence intervals from {result.get('n_boot')} bootstrap resamples "
             "of patients. Metrics are computed only on the images listed here.</span></p>",
             "<h2>Summary</h2>", _summary_table({k: result[k] for k in ("image", "study") if k in result}),
             "<h2>Per class (image level)</h2>", _per_class(result["image"])]
    figs = []
    from deeppneumonia.extras import has

    figures = has("matplotlib")
    if result.get("missing_extra") or not figures:
        what = "Grad-CAM localization and gallery" + ("" if figures else ", figures")
        parts.append(f"<p class=note><b>Not in this report</b> ({what}): "
                     f"{html.escape(str(result.get('missing_extra', 'matplotlib is not installed')))}</p>")
    if len(probs) and figures:
        roc, pr = plots.roc_pr(curves(probs, targets, classes))
        figs += [_img(roc, "ROC"), _img(pr, "PR")]
        if "confusion_matrix" in result["image"]:
            figs.append(_img(plots.confusion(result["image"]["confusion_matrix"], classes), "confusion matrix"))
        figs.append(_img(plots.reliability(reliability(probs, targets, pred.multilabel)), "reliability"))
    parts += ["<h2>Curves</h2><div class=figs>", *figs, "</div>"]
    training = plots.training_curves(run_dir) if figures else []
    if training:
        parts += ["<h2>Training</h2><div class=figs>", *[_img(png, t) for t, png in training], "</div>"]
    parts += ["<h2>Localization of Grad-CAM (true class) against the lesion boxes</h2>",
              "<p class=note>pointing: the heatmap maximum falls in a box; energy: share of heatmap mass inside the "
              "boxes; tiou@t: a box around a thresholded heatmap region overlaps a lesion box with IoU &ge; t.</p>",
              _localization(result.get("localization_gradcam", {}))]
    for layer, loc in result.get("localization_mgacr", {}).items():
        parts += [f"<h3>MGACR map+ of {html.escape(layer)} against the boxes</h3>", _localization(loc)]
    parts += _references_and_occlusion(result)  # issue 18
    if gallery:
        parts.append("<h2>Gallery</h2><p class=note>Grad-CAM of the predicted class; green: radiologists' boxes."
                     "</p><div class=gallery>")
        for name, pic in gallery:
            buf = io.BytesIO()
            pic.save(buf, format="PNG")
            parts.append(f"<figure>{_img(buf.getvalue(), name)}<figcaption class=note>{html.escape(name)}"
                         "</figcaption></figure>")
        parts.append("</div>")
    parts.append("</body></html>")
    path.write_text("\n".join(parts))
