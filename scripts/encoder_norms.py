"""How far Stage I moved each convolution's weight norm from a fresh initialisation (issue 16).

Every ResNet convolution feeds a BatchNorm, so a weight that grew by ``s`` trains ``s^2`` slower in Stage II
(docs/method.md, "Stage I weight norms"). For each encoder this prints, per stage (stem, layer1..layer4), the
range of ``||w_encoder|| / ||w_fresh||`` over its convolutions, against a fresh ResNet18 of the same seed:

    python scripts/encoder_norms.py runs/mgacr-heads/simclr-seed{0,1,2,3,4}/pretrain/encoder.safetensors \
        runs/mgacr-heads/simclr-sgd-seed{0,1,2,3,4}/pretrain/encoder.safetensors
"""

from __future__ import annotations

import argparse
import re

import torch

from deeppneumonia.models.factory import build_classifier, conv_bn_pairs
from deeppneumonia.models.weights import read_state_dict

STAGES = ("conv1", "layer1", "layer2", "layer3", "layer4")


def ratios(path: str, seed: int) -> dict[str, tuple[float, float]]:
    """Per stage, the (min, max) of encoder norm / fresh norm over the stage's convolutions."""
    torch.manual_seed(seed)
    fresh = build_classifier(num_classes=4)
    state = read_state_dict(path)
    out: dict[str, list[float]] = {s: [] for s in STAGES}
    for name, conv, _ in conv_bn_pairs(fresh):
        key = f"{name}.weight"
        if key in state:
            out[name.split(".")[0]].append(float(state[key].float().norm() / conv.weight.detach().norm()))
    return {s: (min(v), max(v)) for s, v in out.items() if v}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("encoders", nargs="+", help="encoder.safetensors files; the seed is read from 'seed<N>' in the path")
    args = ap.parse_args()
    print("| encoder | " + " | ".join(STAGES) + " |")
    print("|---|" + "---|" * len(STAGES))
    for path in args.encoders:
        m = re.search(r"seed(\d+)", path)
        r = ratios(path, int(m.group(1)) if m else 0)
        cells = [f"x{r[s][0]:.2f}-{r[s][1]:.2f}" if s in r else "-" for s in STAGES]
        print(f"| {path} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
