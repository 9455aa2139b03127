"""The end-to-end job: data -> patient split -> cache -> Stage I -> Stage II -> test metrics.

Run folder layout (``run.out_dir``)::

    config.yaml         the resolved config (a rerun with another config in the same folder is refused)
    split.json          image ids of the train / val / test parts (patient-disjoint)
    pretrain/           encoder.safetensors (pretrain.select: the last epoch by default), last.pt, metrics.jsonl, tb/
    train/              model.safetensors (best by train.best_metric), last.pt, metrics.jsonl, tb/
    test_metrics.json   the best Stage II model on the held-out patients (never seen in training)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from deeppneumonia.config import Config, config_from_dict
from deeppneumonia.data.batches import CachedSplit
from deeppneumonia.data.cache import Cache, build_cache
from deeppneumonia.data.manifest import Manifest
from deeppneumonia.data.sources import load_source, resolve_data_path
from deeppneumonia.data.splits import Split, patient_split
from deeppneumonia.errors import ConfigError, DataError
from deeppneumonia.evaluation.metrics import image_and_study_metrics, to_jsonable
from deeppneumonia.inference.split import predict_split
from deeppneumonia.models.checkpoint import load_weights, remove_stale_temps, save_weights, write_json
from deeppneumonia.runtime import distributed
from deeppneumonia.runtime.device import Runtime, check_device, resolve_runtime, seed_everything
from deeppneumonia.training.loop import FitResult, Task, fit, logged_seconds
from deeppneumonia.training.simclr import SimCLRTask
from deeppneumonia.transforms.preprocessing import Preprocessing

log = logging.getLogger(__name__)

# Keys that may differ when a run folder is reused (they do not change what is computed).
_VOLATILE = {("run", "progress"), ("run", "threads"), ("run", "device"), ("run", "checkpoint_minutes"),
             ("data", "cache_dir")}  # the cache is found by its fingerprint wherever it lives


@dataclass
class PreparedData:
    manifest: Manifest
    cache: Cache
    split: Split
    train: CachedSplit
    val: CachedSplit
    test: CachedSplit


def read_and_split(cfg: Config) -> tuple[Manifest, Split]:
    """The run's data set read from ``data.path`` and its patient split (no cache): the split a run with ``cfg``
    trains, selects and tests on. DataError when no image is usable."""
    d = cfg.data
    manifest = load_source(resolve_data_path(d.path), d.source, strict=d.strict, classes=d.classes,
                           patient_regex=d.patient_regex)
    if len(manifest) == 0:
        raise DataError(f"{d.path}: no usable images (problems: {[str(p) for p in manifest.problems[:5]]})")
    return manifest, patient_split(manifest, d.val_fraction, d.test_fraction, d.split_seed)


def prepare_data(cfg: Config, progress: bool = True) -> PreparedData:
    """Read the source, split by patient, and open (or build) the cache.

    Under torchrun the first process of each node builds the cache (in parallel worker processes) while
    the others wait, then every process opens the same memory-mapped file.
    """
    distributed.setup(cfg.run.device)
    check_device(distributed.device_for(cfg.run.device))  # a missing GPU is said now, not after an epoch
    d = cfg.data
    manifest, split = read_and_split(cfg)
    skipped = [p for p in manifest.problems if p.severity == "error"]
    if skipped:
        log.warning("%d row(s)/file(s) skipped while reading %s; `deeppneumonia data inspect` lists them",
                    len(skipped), d.path)
    check_training_data(manifest, split, d.path)
    with distributed.main_first(local=True):
        cache = build_cache(manifest, d.size, d.cache_dir, d.resize, progress=progress and distributed.is_main())
    return PreparedData(manifest, cache, split, CachedSplit(cache, split.train), CachedSplit(cache, split.val),
                        CachedSplit(cache, split.test))


def check_training_data(manifest: Manifest, split: Split, where: str) -> None:
    """The one check of a data set's classes and parts before training: DataError saying what is degenerate.

    Multi-class: at least two classes, each with at least one image (an empty class folder is named).
    Multi-label: at least one finding with a positive image (findings without one are warned about).
    Training and validation parts must both hold images.
    """
    counts = manifest.class_counts()
    if manifest.task == "multiclass":
        if len(manifest.classes) < 2:
            raise DataError(f"{where}: one class only ({list(manifest.classes)}, {len(manifest)} images): a classifier "
                            "needs at least two classes")
        empty = [c for c, n in counts.items() if n == 0]
        if empty:
            raise DataError(f"{where}: class(es) {empty} have no usable image (an empty class folder, or every file "
                            f"of it skipped); images per class: {counts}. Add images or remove the class")
    else:
        if not any(counts.values()):
            raise DataError(f"{where}: no finding has a positive image: nothing to learn ({counts})")
        empty = [c for c, n in counts.items() if n == 0]
        if empty:
            log.warning("%s: finding(s) %s have no positive image; their metrics will be undefined", where, empty)
    for part in ("train", "val"):
        if len(getattr(split, part)) == 0:
            raise DataError(f"{where}: the patient split leaves no {part} images ({len(manifest)} images of "
                            f"{len(set(manifest.patients()))} patients); add data or change data.val_fraction / "
                            "data.test_fraction")
    if manifest.task == "multiclass":
        present = set(manifest.label_indices()[split.train].tolist())
        missing = [c for i, c in enumerate(manifest.classes) if i not in present]
        if missing:
            log.warning("%s: class(es) %s have no image in the training part (too few patients)", where, missing)


def _diff(a: dict[str, Any], b: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[str]:
    """``key: old -> new`` for each differing leaf of two nested config dicts, ignoring the volatile run keys."""
    out = []
    for k in sorted(set(a) | set(b)):
        key = (*prefix, k)
        if key in _VOLATILE:
            continue
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff(va, vb, key)
        elif va != vb:
            out.append(f"{'.'.join(key)}: {va!r} -> {vb!r}")
    return out


def open_run(cfg: Config) -> Path:
    """Create the run folder, or check that an existing one holds the same config (for resuming)."""
    distributed.setup(cfg.run.device)
    run_dir = Path(cfg.run.out_dir).expanduser()
    with distributed.main_first(local=False):
        if run_dir.exists() and not run_dir.is_dir():
            raise ConfigError(f"run.out_dir={run_dir}: is a file, not a folder; choose another run.out_dir")
        try:
            _check_or_write_config(cfg, run_dir)
        except OSError as exc:  # below a file, under /proc, read-only, no space
            raise ConfigError(f"run.out_dir={run_dir}: cannot write the run folder: {exc}") from exc
        if distributed.is_main():
            remove_stale_temps(run_dir)
    return run_dir


def _check_or_write_config(cfg: Config, run_dir: Path) -> None:
    """Write ``config.yaml`` into a new run folder, or check that the saved one matches ``cfg``.

    Raises ConfigError when the saved config is unreadable, not a mapping, or differs (volatile run keys aside).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    saved = run_dir / "config.yaml"
    current = json.loads(json.dumps(cfg.to_dict()))  # tuples -> lists, as YAML reads them back
    if saved.is_file():
        try:
            old = yaml.safe_load(saved.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{saved}: not a readable config ({type(exc).__name__}); delete it (or the run folder) "
                              "to start afresh, or choose another run.out_dir") from exc
        if not isinstance(old, dict):
            raise ConfigError(f"{saved}: not a config (a YAML mapping); delete it or choose another run.out_dir")
        with contextlib.suppress(ConfigError):  # an older folder: settings added since take their defaults
            old = json.loads(json.dumps(config_from_dict(old).to_dict()))
        diff = _diff(old, current)
        if diff:
            raise ConfigError(f"{run_dir} holds a run with another config ({'; '.join(diff[:5])}); choose another "
                              "run.out_dir, or delete the folder to start over")
    else:
        saved.write_text(yaml.safe_dump(current, sort_keys=False))


def place_data(cfg: Config, data: PreparedData, rt: Runtime) -> None:
    """The single-GPU fast path: keep the training split's uint8 images resident on the device when they fit.

    On a GPU every split that is not resident gathers its batches into pinned memory (asynchronous copies).
    """
    mode = cfg.run.data_on_device
    if rt.device.type == "cuda":
        for split in (data.train, data.val, data.test):
            split.pin = split.resident is None
    if mode == "never" or rt.device.type == "cpu" or data.train.resident is not None:
        return
    need = data.train.nbytes()
    if mode == "auto":
        free = torch.cuda.mem_get_info(rt.device)[0] if rt.device.type == "cuda" else 0
        if need > free // 4:
            log.info("training images (%.0f MB) stay in host memory: more than a quarter of free %s memory",
                     need / 2**20, rt.device)
            return
    data.train.keep_on(rt.device)
    data.train.pin = False
    log.info("training images resident on %s (%.0f MB)", rt.device, need / 2**20)


def runtime_for(cfg: Config) -> Runtime:
    """The device, precision and memory format of ``cfg.run`` (this process's GPU under torchrun)."""
    r = cfg.run
    return resolve_runtime(distributed.device_for(r.device), r.precision, r.channels_last, r.threads, r.deterministic)


def extra_pretrain_data(cfg: Config, data: PreparedData) -> list[CachedSplit]:
    """``pretrain.extra_data``: every image of other data sets, minus any file the run's own data set holds."""
    own = {Path(r.path).resolve() for r in data.manifest.records}
    parts = []
    for path in cfg.pretrain.extra_data:
        m = load_source(resolve_data_path(path), "auto", strict=cfg.data.strict)
        keep = np.array([Path(r.path).resolve() not in own for r in m.records], dtype=bool)
        if (~keep).any():
            log.warning("pretrain.extra_data %s: %d image(s) belong to the run's data set and are left out",
                        path, int((~keep).sum()))
        with distributed.main_first(local=True):
            cache = build_cache(m, cfg.data.size, cfg.data.cache_dir, cfg.data.resize,
                                progress=cfg.run.progress and distributed.is_main())
        part = CachedSplit(cache, np.flatnonzero(keep))
        log.info("Stage I also uses %d unlabelled image(s) of %s", len(part), path)
        parts.append(part)
    return parts


def run_pretrain(cfg: Config, data: PreparedData | None = None) -> FitResult:
    """Stage I (SimCLR) on the training split and any ``pretrain.extra_data``; returns the loop's result."""
    run_dir = open_run(cfg)
    seed_everything(cfg.run.seed)
    data = data or prepare_data(cfg, cfg.run.progress)
    write_split(data, run_dir)
    rt = runtime_for(cfg)
    place_data(cfg, data, rt)
    extra = extra_pretrain_data(cfg, data)
    for part in extra:
        part.pin = rt.device.type == "cuda"
    task = SimCLRTask(cfg, data.train, data.val, rt, multiclass=data.manifest.task == "multiclass", extra=extra)
    return fit(task, cfg.pretrain.optim, run_dir / "pretrain", rt, cfg.run.seed, cfg.run.progress,
               cfg.run.checkpoint_minutes, cfg.run.sync_bn, cfg.run.compile)


def run_train(cfg: Config, data: PreparedData | None = None) -> dict[str, Any]:
    """Stage II, then the best model on the test patients. Returns the test metrics."""
    run_dir = open_run(cfg)
    seed_everything(cfg.run.seed + 1)
    data = data or prepare_data(cfg, cfg.run.progress)
    write_split(data, run_dir, trained_on_val=cfg.train.final_fit)
    rt = runtime_for(cfg)
    encoder = None
    if cfg.train.pretrained:
        path = Path(cfg.train.encoder).expanduser() if cfg.train.encoder else run_dir / "pretrain" / "encoder.safetensors"
        if not path.is_file():
            raise ConfigError(f"train.pretrained is true but {path} does not exist: run `deeppneumonia pretrain` "
                              "first, set train.encoder=PATH, or set train.pretrained=false")
        encoder, meta = load_weights(path)
        if meta.get("size") != cfg.data.size:
            log.warning("encoder was pre-trained at %s px, training at %s px", meta.get("size"), cfg.data.size)
    if cfg.train.final_fit:
        data = final_fit_data(data)
    place_data(cfg, data, rt)
    task = build_task(cfg, data, rt, encoder)
    result = fit(task, cfg.train.optim, run_dir / "train", rt, cfg.run.seed, cfg.run.progress,
                 cfg.run.checkpoint_minutes, cfg.run.sync_bn, cfg.run.compile, cfg.train.ema_decay)
    out: dict[str, Any] = {}
    if distributed.is_main():  # one process writes thresholds and test metrics; the others receive them
        store_thresholds(cfg, data, rt, run_dir / "train" / "model.safetensors")
        out = evaluate_test(cfg, data, rt, run_dir, result)
    return distributed.broadcast_object(out)  # type: ignore[return-value]


def final_fit_data(data: PreparedData) -> PreparedData:
    """``data`` whose training part is the training and validation patients together (``train.final_fit``, which
    also makes every task keep the last epoch: ``best_metric`` "last").

    Validation still runs on the validation patients (now training images: its scores are not estimates), the
    test part is unchanged."""
    both = np.sort(np.concatenate([data.split.train, data.split.val]))
    log.info("final fit: training on %d images (train %d + validation %d); the last epoch is kept", len(both),
             len(data.split.train), len(data.split.val))
    return dataclasses.replace(data, train=CachedSplit(data.cache, both))


def build_task(cfg: Config, data: PreparedData, rt: Runtime, encoder: dict[str, torch.Tensor] | None) -> Task:
    """The Stage II task of ``train.method`` (``training/tasks.py``); each is one object run by the one loop."""
    from deeppneumonia.training.tasks import TASKS

    m = data.manifest
    return TASKS[cfg.train.method](cfg, data.train, data.val, rt, m.classes, m.task, encoder)


def load_model(path: Path, rt: Runtime) -> tuple[torch.nn.Module, dict[str, Any], dict[str, torch.Tensor]]:
    """A saved ``model.safetensors`` rebuilt for ``rt``: the model, its metadata and its state dict."""
    from deeppneumonia.models.factory import load_classifier

    model, meta, state = load_classifier(path)
    return model.to(rt.device).to(memory_format=rt.memory_format), meta, state


def store_thresholds(cfg: Config, data: PreparedData, rt: Runtime, path: Path) -> None:
    """Choose per-class operating points on the validation patients and store them in the model's metadata."""
    from deeppneumonia.evaluation.thresholds import choose_thresholds

    if not len(data.val):
        return
    model, meta, state = load_model(path, rt)
    probs = predict_split(model, data.val, rt, Preprocessing.from_config(cfg.data), meta["task"] == "multilabel")
    t = cfg.train
    thresholds = choose_thresholds(probs, data.val.targets.numpy(), t.threshold_method, t.target_sensitivity)
    meta.update({"thresholds": [float(v) for v in thresholds],
                 "threshold_method": f"{t.threshold_method} on the validation split ({len(data.val)} images)"})
    meta.pop("versions", None)
    save_weights(path, state, meta)


def evaluate_test(cfg: Config, data: PreparedData, rt: Runtime, run_dir: Path,
                  result: FitResult | None = None) -> dict[str, Any]:
    """Metrics of the best model on the test patients, written to ``test_metrics.json`` and returned.

    Image and study metrics (with ``test_predictions.npz``) when the test part has images, plus the best epoch
    and the training minutes (from ``metrics.jsonl``, else from ``result``).
    """
    model, meta, _ = load_model(run_dir / "train" / "model.safetensors", rt)
    multilabel = meta["task"] == "multilabel"
    out: dict[str, Any] = {"images": len(data.test), "patients": len({data.manifest.records[int(i)].patient_id
                                                                       for i in data.test.indices})}
    if len(data.test):
        out.update(score_test_part(model, multilabel, cfg, data, rt, run_dir / "test_predictions.npz"))
    out["best_epoch"] = meta.get("epoch")
    seconds = logged_seconds(run_dir / "train")  # all epochs, also those of an earlier, resumed invocation
    if seconds is not None:
        out["train_minutes"] = round(seconds / 60, 2)
    elif result is not None:
        out["train_minutes"] = round(result.seconds / 60, 2)
    out = to_jsonable(out)
    write_json(run_dir / "test_metrics.json", out)
    return out


def score_test_part(model: torch.nn.Module, multilabel: bool, cfg: Config, data: PreparedData, rt: Runtime,
                    predictions: Path) -> dict[str, Any]:
    """Image and study metrics of ``model`` on the test part; its probabilities saved to ``predictions``."""
    probs = predict_split(model, data.test, rt, Preprocessing.from_config(cfg.data), multilabel)
    targets = data.test.targets.numpy()
    recs = [data.manifest.records[int(i)] for i in data.test.indices]
    save_predictions(predictions, probs, targets, recs)
    return image_and_study_metrics(probs, targets, [r.study_id for r in recs], multilabel)


def save_predictions(path: Path, probs: np.ndarray, targets: np.ndarray, records: list[Any]) -> None:
    """The test part's probabilities with their targets and ids (for paired comparisons of runs), atomically."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("wb") as fh:
        np.savez_compressed(fh, probs=probs.astype(np.float32), targets=targets.astype(np.float32),
                            image_id=np.asarray([r.image_id for r in records], dtype=str),
                            study_id=np.asarray([r.study_id for r in records], dtype=str),
                            patient_id=np.asarray([r.patient_id for r in records], dtype=str))
    os.replace(tmp, path)


def write_split(data: PreparedData, run_dir: Path, trained_on_val: bool = False) -> None:
    """Write ``split.json``: the image ids of each part (rank 0 only); ``"final_fit": true`` when Stage II also
    trained on the validation part (``train.final_fit``), so ``evaluate --split val`` can say it is not held out."""
    if not distributed.is_main():
        return
    parts: dict[str, Any] = {k: [data.manifest.records[int(i)].image_id for i in v]
                             for k, v in data.split.parts().items()}
    if trained_on_val:
        parts["final_fit"] = True
    write_json(run_dir / "split.json", parts)
