"""Print a Stage II run's loss balance per epoch as a markdown table, from its ``train/metrics.jsonl``.

Columns: the gradient norm each weighted term sends into the backbone (``train_gn_*``, measured on the first
``train.mgacr.grad_norm_steps`` steps of each epoch), each auxiliary norm as a ratio of the classification
norm, the share of MGACR's map+ mass inside the boxes per layer on the boxed validation images (``val_att*_inside``;
``val_att_mask_area`` is what a map that ignores the boxes would get) and the validation study mAP.

    python scripts/loss_balance.py runs/t1-siim128/seed0/row5/train/metrics.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

TERMS = ("att_pos", "att_neg", "feat")


def table(records: list[dict[str, float]]) -> str:
    """The markdown table of the module docstring; columns absent from every record are left out."""
    layers = sorted({k[len("val_att"):-len("_inside")] for r in records for k in r
                     if k.startswith("val_att") and k.endswith("_inside")}, key=int)
    terms = [t for t in TERMS if any(f"train_gn_{t}" in r for r in records)]
    head = (["epoch", "gn_cls"] + [f"gn_{t}" for t in terms] + [f"{t} / cls" for t in terms]
            + [f"inside layer{i}" for i in layers] + ["mask area", "val study mAP"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cell(v: float | None, fmt: str = ".3f") -> str:
        return "–" if v is None else format(v, fmt)

    for r in records:
        cls = r.get("train_gn_cls")
        row = [str(r.get("epoch")), cell(cls)] + [cell(r.get(f"train_gn_{t}")) for t in terms]
        row += [cell(r[f"train_gn_{t}"] / cls if cls and f"train_gn_{t}" in r else None, ".2f") for t in terms]
        row += [cell(r.get(f"val_att{i}_inside")) for i in layers]
        row += [cell(r.get("val_att_mask_area")), cell(r.get("val_study_map"))]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("metrics", type=Path, help="a Stage II run's train/metrics.jsonl")
    args = ap.parse_args()
    records = [json.loads(line) for line in args.metrics.read_text().splitlines() if line.strip()]
    print(table(records))


if __name__ == "__main__":
    main()
