"""Short learning-rate probe for one architecture on a preset's data (a sanity check, not a search).

Trains ``--arch`` from scratch for ``--steps`` SGD steps at each ``--lr`` (linear warm-up over the first
``--warmup`` steps, then constant; the preset's momentum, Nesterov and weight decay, its augmentation) and
prints the mean training loss of the last ``--tail`` steps against the class-prior entropy, and the
validation macro AUROC. An architecture whose loss stays above the prior at a rate has not started learning.

    python scripts/lr_probe.py -c siim-ablation-cpu --arch vgg16_bn data.cache_dir=/tmp/dpcache --lr 0.02 0.005 0.001
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from deeppneumonia.config import load_config
from deeppneumonia.models.factory import build_classifier
from deeppneumonia.runtime.device import seed_everything
from deeppneumonia.training.pipeline import prepare_data, runtime_for
from deeppneumonia.transforms.inputs import make_inputs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--config", default="siim-ablation-cpu")
    ap.add_argument("--arch", default="vgg16_bn")
    ap.add_argument("--lr", type=float, nargs="+", default=[0.02, 0.005, 0.001])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--tail", type=int, default=20)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    cfg = load_config(args.config, [*args.overrides, "run.progress=false"])
    data = prepare_data(cfg, False)
    rt = runtime_for(cfg)
    d, o = cfg.data, cfg.train.optim
    counts = np.asarray(data.train.class_counts(), dtype=float)
    prior = counts / counts.sum()
    entropy = float(-(prior * np.log(prior)).sum())
    print(f"{args.config}, {args.arch}, {args.steps} steps of {o.batch_size}, class-prior entropy {entropy:.3f}\n")
    print("| lr | mean loss, last steps | vs prior | val macro AUROC | s |\n|---|---|---|---|---|")
    for lr in args.lr:
        seed_everything(0)
        model = build_classifier(len(data.manifest.classes), args.arch).to(rt.device).to(memory_format=rt.memory_format)
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=o.momentum, nesterov=o.nesterov,
                              weight_decay=o.weight_decay)
        g = torch.Generator().manual_seed(0)
        losses: list[float] = []
        t0 = time.perf_counter()
        model.train()
        batches = data.train.iterate(o.batch_size, shuffle=True, seed=0, drop_last=True)
        for step in range(args.steps):
            try:
                batch = next(batches)
            except StopIteration:
                batches = data.train.iterate(o.batch_size, shuffle=True, seed=step, drop_last=True)
                batch = next(batches)
            for group in opt.param_groups:
                group["lr"] = lr * min(1.0, (step + 1) / args.warmup)
            x, _ = make_inputs(batch, rt, d.mean, d.std, cfg.train.augment, g)
            loss = torch.nn.functional.cross_entropy(model(x), batch.target.argmax(1).to(rt.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item() if math.isfinite(loss.item()) else float("inf"))
        model.eval()
        probs, ys = [], []
        with torch.no_grad():
            for batch in data.val.iterate(64):
                x, _ = make_inputs(batch, rt, d.mean, d.std, None, None)
                probs.append(torch.softmax(model(x).float(), 1).cpu().numpy())
                ys.append(batch.target.argmax(1).numpy())
        p, y = np.concatenate(probs), np.concatenate(ys)
        auroc = roc_auc_score(np.eye(p.shape[1])[y], p, average="macro")
        tail = float(np.mean(losses[-args.tail:]))
        print(f"| {lr:g} | {tail:.3f} | {tail - entropy:+.3f} | {auroc:.3f} | {time.perf_counter() - t0:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
