"""Typed configuration: frozen dataclasses, YAML presets holding values only, dotted overrides.

``load_config("quick", ["train.epochs=3", "train.loss.gamma=1.5"])`` reads the preset (a name of a
shipped preset or a path to a YAML file), applies the overrides, and checks every key and type: an
unknown key or a value of the wrong type is a ConfigError that names the key and what was expected.
Every choice the paper leaves open is a field here; docs/method.md says why each default was chosen.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, fields, is_dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from deeppneumonia.errors import ConfigError

# YAML 1.1 (PyYAML) reads a float without a dot (5e-4) as a string
_EXPONENT_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


@dataclass(frozen=True)
class DataConfig:
    path: str = "sample:nih"  # a data folder or CSV; "sample:nih" / "sample:kermany" = the shipped sample
    source: str = "auto"  # auto | siim | folder | covid_cxr | nih | nih_binary | csv
    size: int = 224  # working size (square), pixels
    resize: Literal["squash", "letterbox"] = "squash"
    cache_dir: str = "~/.cache/deeppneumonia"
    strict: bool = False  # stop at the first bad file instead of skipping it
    patient_regex: str | None = None
    classes: tuple[str, ...] | None = None  # class order; for a generic CSV with one 1/0/empty column per label
    val_fraction: float = 0.15  # patient-grouped
    test_fraction: float = 0.15  # patient-grouped; 0 = no test part
    split_seed: int = 0
    mean: float = 0.5  # input normalisation, stored with the weights
    std: float = 0.25


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentations applied on the batch (image and mask with one random draw). No hue: images are grey."""

    crop_scale: tuple[float, float] = (0.7, 1.0)  # random resized crop, area fraction
    rotate_deg: float = 10.0
    hflip: bool = False  # off by default: anatomy (heart on the left) is not mirror-symmetric
    brightness: float = 0.2
    contrast: float = 0.2
    gamma: float = 0.2  # log-uniform in [1/(1+g), 1+g]
    blur_prob: float = 0.0
    # Gaussian blur sigma range as a fraction of the image side, so a preset means the same at 64, 128 and 224 px;
    # (0.0005, 0.009) is SimCLR's 0.1-2.0 px at 224 px
    blur_sigma_rel: tuple[float, float] = (0.0005, 0.009)
    blur_sigma: tuple[float, float] | None = None  # the same in pixels (older presets); when set it wins over _rel
    noise_std: float = 0.0  # per-pixel Gaussian noise, intensity units (its effect shrinks as the size grows)
    # random shift crop (pad and crop back): translate by up to shift x the side in whole pixels, zero fill.
    # crop_scale [1, 1] means no resized crop (and no aspect jitter); with rotate_deg 0 only the shift is left.
    shift: float = 0.0


@dataclass(frozen=True)
class OptimConfig:
    epochs: int = 30
    batch_size: int = 16
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = True
    schedule: Literal["cosine", "step", "constant", "onecycle"] = "cosine"
    warmup_epochs: float = 1.0  # linear warm-up (cosine, step, constant); onecycle uses onecycle_warmup instead
    # onecycle (as torch's OneCycleLR without momentum cycling): cosine rise from lr * onecycle_start to the
    # peak `lr` over the first onecycle_warmup of all steps, then cosine decay to lr * onecycle_start / 1e4
    onecycle_warmup: float = 0.3
    onecycle_start: float = 0.04
    # progressive resizing (fast.ai, airbench): the first epochs train on smaller images, the side rising linearly
    # from resize_from px at epoch 0 to data.size at resize_until x epochs, in steps of 32 px (ResNet's stride,
    # so every feature grid is whole); 0 = off. Validation, test and inference always use data.size.
    resize_from: int = 0
    resize_until: float = 0.5


@dataclass(frozen=True)
class PretrainConfig:
    """Stage I: SimCLR (Chen et al. 2020), paper Sec. IV-B, Eq. 1."""

    # SGD's own SimCLR recipe (lightly's benchmarks: lr 0.06 x batch/128, weight decay 5e-4). SimCLR's 0.3 / 1e-6
    # are LARS values; with plain SGD they grew the stem's weights ~20x and slowed Stage II (docs/method.md)
    optim: OptimConfig = OptimConfig(epochs=20, batch_size=128, lr=0.06, weight_decay=5e-4)
    temperature: float = 0.2
    proj_hidden: int = 512
    proj_dim: int = 128
    # a light recipe for grey radiographs: density and texture carry the diagnosis, so the views keep most of the
    # lung (crop area >= 0.5) and its grey levels (intensity jitter 0.2); blur relative to the size; no noise
    augment: AugmentConfig = AugmentConfig(crop_scale=(0.5, 1.0), rotate_deg=10.0, brightness=0.2,
                                           contrast=0.2, gamma=0.2, blur_prob=0.5, noise_std=0.0)
    knn_k: int = 20  # kNN probe on the validation split after each epoch (multi-class data); 0 = off
    # which epoch's encoder is kept: the last, the lowest contrastive loss on the validation split (fixed views),
    # or the best kNN accuracy (noisy: near the majority-class rate early in training)
    select: Literal["last", "val_loss", "knn"] = "last"
    # More images for Stage I only, labels ignored: other data sets (paths or sample:NAME), all their images.
    # Any file that is also in the run's data set is left out, so no validation or test image is seen.
    extra_data: tuple[str, ...] = ()


@dataclass(frozen=True)
class MGACRConfig:
    """Mask-guided attention with contrastive regulation, paper Sec. IV-C, Eqs. 2-6 (docs/method.md)."""

    attention: bool = True  # L_att+ and L_att- (Eqs. 2-4): the "mask-guided attention" row of Table I
    feature: bool = True  # L_feat (Eq. 5): the "feature learning with CR" row of Table I
    # robust: bounded Eq. 2, Eq. 5 on boxed images with detached maps (shapes the features, not the maps) and an
    # eps relative to the features; paper: Eqs. 2-6 as printed (Eq. 5 then has its minimum at map+=1, map-=0)
    form: Literal["robust", "paper"] = "robust"
    feature_target: Literal["maps", "masks"] = "maps"  # robust Eq. 5 weighs the features by the detached maps or masks
    reduction: Literal["sample", "batch"] = "sample"  # per-image ratios averaged, or the ratio of the batch means
    # conv1x1 = a 1x1 conv reading all channels (chosen on the SIIM validation split, docs/method.md); cbam = the
    # paper's CBAM spatial attention (channel max + mean -> 7x7 conv), pinned by the paper and siim-128-cpu presets
    head: Literal["cbam", "conv1x1"] = "conv1x1"
    layers: tuple[int, ...] = (1, 2, 3, 4)  # residual layers that get an attention head
    weight_attention: float = 1.0  # lambda of L_att_cr against the classification loss
    weight_feature: float = 1.0  # lambda of L_feat_cr
    # images without boxes: by_class = mask+ = 0 for the negative class only, positives without boxes left out of
    # MGACR (they still train the classifier); zero_mask = mask+ = 0 for all of them; skip = all left out
    no_box: Literal["by_class", "zero_mask", "skip"] = "by_class"
    negative_class: str | None = None  # for by_class; None = the class whose name matches negative|normal|no finding
    kernel_size: int = 7  # CBAM spatial attention kernel
    grad_norm_steps: int = 2  # first steps of each epoch that log each term's gradient norm into the backbone; 0 = off


@dataclass(frozen=True)
class LossConfig:
    kind: Literal["ce", "cb_focal"] = "cb_focal"  # Eq. 9; "ce" = plain cross-entropy
    beta: float = 0.999
    gamma: float = 2.0
    label_smoothing: float = 0.0  # target = (1 - e) one-hot + e / C, inside the (focal) loss; 0 = off


@dataclass(frozen=True)
class IAMConfig:
    """Iterative Attention Mining (weakly supervised localization from image labels; a reconstruction).

    Epochs ``0 .. warmup_epochs-1`` train the classifier on the images (round 0); then ``iterations`` mining
    rounds of ``epochs_per_iteration`` epochs each (so ``train.optim.epochs`` must equal
    ``warmup_epochs + iterations * epochs_per_iteration``). At the start of round k a frozen copy of the network
    is kept; during round k the salient regions of the networks of rounds 0..k-1 (``heatmap`` map of each
    positive label >= ``erase_threshold`` x its max) are erased with ``erase_fill`` from every positive image
    (classes named in ``negative_classes`` are never erased), the network is trained on the erased images, and
    the knowledge-preservation loss (``kp_loss``, weight ``kp_weight``) keeps its responses on the original
    images close to the frozen copy's. The localization map is the ``aggregate`` of the normalised maps of
    every round's network. ``init`` starts from a trained classifier (its backbone, and its ``fc`` when the
    architecture matches), e.g. to mine the attention of an existing model with ``warmup_epochs=0``. Boxes are
    never used. docs/method.md explains each choice.

    Learning rate (``round_schedule``): with ``cosine`` (default) round 0 runs ``train.optim``'s warm-up and
    schedule over its own ``warmup_epochs`` epochs, and each mining round starts at ``round_lr`` x
    ``train.optim.lr`` with no warm-up and decays by a cosine to 0 at the round's end (a fine-tuning schedule:
    mining starts from a trained network); ``constant`` keeps ``round_lr`` x lr through each round; ``global``
    is the schedule before issue 18: ``train.optim`` (warm-up included) spans the whole run, rounds included.
    """

    warmup_epochs: int = 2
    iterations: int = 2
    epochs_per_iteration: int = 1
    heatmap: Literal["cam", "gradcam"] = "cam"
    erase_threshold: float = 0.6
    erase_fill: Literal["mean", "zero", "blur"] = "mean"
    kp_loss: Literal["kl", "l2_logits"] = "kl"
    kp_weight: float = 1.0
    msa: bool = True  # multi-scale aggregation: the classifier also pools features of earlier stages
    msa_layers: tuple[int, ...] = (3, 4)
    aggregate: Literal["max", "mean"] = "max"
    negative_classes: tuple[str, ...] = ("Negative for Pneumonia", "No Finding", "Normal", "clear")  # case-insensitive
    init: str | None = None  # start from this classifier model.safetensors (then warmup_epochs may be 0)
    round_schedule: Literal["cosine", "constant", "global"] = "cosine"  # learning rate inside each mining round
    round_lr: float = 0.1  # a mining round's starting learning rate, as a fraction of train.optim.lr


@dataclass(frozen=True)
class CANConfig:
    """Cross-Attention Networks (multi-label, image labels only; a reconstruction). docs/method.md."""

    attention_weight: float = 0.1  # weight of the attention loss against the balance loss
    balance_gamma: float = 2.0  # focusing on hard samples (0 = none)
    balance_pos_weight: Literal["batch", "dataset", "none"] = "dataset"  # positive/negative re-weighting


@dataclass(frozen=True)
class TrainConfig:
    """Stage II: supervised training with MGACR and the class-balanced focal loss."""

    method: Literal["deep_pneumonia", "iam", "can"] = "deep_pneumonia"  # which Stage II task trains
    optim: OptimConfig = OptimConfig()
    augment: AugmentConfig = AugmentConfig()
    arch: Literal["resnet18", "resnet50", "vgg16", "vgg16_bn"] = "resnet18"  # others only as Table II baselines (no MGACR)
    pretrained: bool = True  # start from the Stage I encoder of the same run (or `encoder`)
    encoder: str | None = None  # explicit path to an encoder .safetensors
    # scale each Stage I convolution back to the norm of a fresh initialisation (the function is unchanged: a
    # BatchNorm follows every one); SimCLR grows the norms, which slows Stage II (docs/method.md)
    encoder_rescale: bool = False
    encoder_stages: int = 4  # load the stem and layer1..layer<N> of the encoder (0-4); deeper layers start fresh
    # a local torchvision/timm ResNet state dict (.safetensors or weights_only .pth) to start Stage II from; the RGB
    # stem is summed to one grey channel, unmatched keys are reported (models/weights.py). Never downloaded.
    # With train.pretrained=true the Stage I encoder is loaded after it and replaces its backbone weights.
    init_weights: str | None = None
    mgacr: MGACRConfig = MGACRConfig()
    loss: LossConfig = LossConfig()
    iam: IAMConfig = IAMConfig()
    can: CANConfig = CANConfig()
    # validation metric that picks the best checkpoint (higher is better): study_map = mAP of the per-study mean
    # probabilities, the headline of the tables (image-level "map" where the validation split has no study level);
    # multi-label tasks always use auroc_macro; "last" keeps the last epoch (no selection)
    best_metric: str = "study_map"
    # Final fit (issue 17): once a schedule is fixed on the validation split, train on train + validation patients
    # for the same epochs and keep the last epoch (every task selects by "last", whatever best_metric says); the
    # validation scores in the log are on training images, the thresholds are chosen on them too. Test untouched.
    final_fit: bool = False
    keep_attention_heads: bool = False  # also save MGACR heads (for analysis only; never for inference)
    threshold_method: Literal["youden", "sensitivity"] = "youden"  # per-class operating points on validation
    target_sensitivity: float = 0.9  # for threshold_method=sensitivity
    # EMA of the weights (and BN statistics), used for validation and the saved model; 0 = off. The decay
    # of step t is min(ema_decay, (1 + t) / (10 + t)), so a short run is not dominated by the initial weights.
    ema_decay: float = 0.0


@dataclass(frozen=True)
class RunConfig:
    out_dir: str = "runs/demo"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 where the hardware has it
    channels_last: bool = True
    compile: bool = False
    deterministic: bool = False  # CUDA: deterministic algorithms and no cudnn.benchmark (resume then computes
    # exactly what an uninterrupted run would, as on CPU); false = cudnn.benchmark picks the fastest kernels
    data_on_device: Literal["auto", "always", "never"] = "auto"  # keep the training images on the GPU (auto: if
    # they take under a quarter of its free memory); batches are then gathered and augmented there
    sync_bn: bool = True  # under torchrun on GPUs: BatchNorm statistics over the global batch (SyncBatchNorm)
    threads: int = 0  # torch CPU threads; 0 = leave the default
    progress: bool = True
    checkpoint_minutes: float = 10.0  # also save resumable state within an epoch this often


@dataclass(frozen=True)
class Config:
    data: DataConfig = DataConfig()
    pretrain: PretrainConfig = PretrainConfig()
    train: TrainConfig = TrainConfig()
    run: RunConfig = RunConfig()

    def to_dict(self) -> dict[str, Any]:
        """The config as nested plain dicts (what checkpoints and ``config.yaml`` store)."""
        return dataclasses.asdict(self)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert ``value`` to the annotated type ``tp``; raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return _build(tp, value, key)  # type: ignore[arg-type]
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError("; ".join(errors))
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: {value!r} is not one of {typing.get_args(tp)}")
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args, strict=True))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads 5e-4 (no dot) as a string; everyone means the number
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")


def _build(cls: type, values: dict[str, Any], prefix: str = "", base: Any = None) -> Any:
    """An instance of the dataclass ``cls`` from ``values`` on top of ``base`` (default ``cls()``).

    Nested mappings update the nested sections key by key; raises ConfigError for an unknown key or a value of
    the wrong type (``prefix`` is the dotted key path for the messages).
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(f'{prefix}{k}' for k in unknown)}; "
                          f"valid keys under '{prefix or '<top>'}': {sorted(names)}")
    base = base if base is not None else cls()
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}{name}"
        current = getattr(base, name)
        if is_dataclass(hints[name]) and isinstance(value, dict):
            kwargs[name] = _build(hints[name], value, key + ".", current)
        else:
            kwargs[name] = _coerce(value, hints[name], key)
    return replace(base, **kwargs)


def _non_finite(node: Any, prefix: str = "") -> list[str]:
    """Keys holding a NaN or infinite number (YAML reads .nan / .inf as floats)."""
    out = []
    for f in fields(node):
        value, key = getattr(node, f.name), f"{prefix}{f.name}"
        if is_dataclass(value):
            out += _non_finite(value, key + ".")
        elif any(isinstance(v, float) and not math.isfinite(v) for v in (value if isinstance(value, tuple) else (value,))):
            out.append(f"{key}={value!r}: must be a finite number")
    return out


def validate(cfg: Config) -> Config:
    """The one check of the config's value ranges (types are checked while it is built); returns ``cfg``.

    Raises ConfigError listing every key out of range, so a degenerate run (0 epochs, a batch of -4, a zero
    learning rate, a negative momentum, no validation images) is refused before any data is read.
    """
    bad = _non_finite(cfg)

    def need(ok: bool, key: str, value: Any, what: str) -> None:
        if not ok:
            bad.append(f"{key}={value!r}: {what}")

    d, r = cfg.data, cfg.run
    need(d.size >= 8, "data.size", d.size, "must be at least 8 pixels")
    need(0 < d.val_fraction < 1, "data.val_fraction", d.val_fraction,
         "must be in (0, 1): Stage II picks its best checkpoint and thresholds on the validation patients")
    need(0 <= d.test_fraction < 1, "data.test_fraction", d.test_fraction, "must be in [0, 1) (0 = no test part)")
    need(d.val_fraction + d.test_fraction < 1, "data.val_fraction + data.test_fraction",
         d.val_fraction + d.test_fraction, "must leave training images (sum below 1)")
    need(d.std > 0, "data.std", d.std, "must be > 0")
    need(d.split_seed >= 0, "data.split_seed", d.split_seed, "must be >= 0")
    for name, o in (("pretrain.optim", cfg.pretrain.optim), ("train.optim", cfg.train.optim)):
        need(o.epochs >= 1, f"{name}.epochs", o.epochs, "must be at least 1")
        need(o.batch_size >= 1, f"{name}.batch_size", o.batch_size, "must be at least 1")
        need(o.lr > 0, f"{name}.lr", o.lr, "must be > 0")
        need(0 <= o.momentum < 1, f"{name}.momentum", o.momentum, "must be in [0, 1)")
        need(o.weight_decay >= 0, f"{name}.weight_decay", o.weight_decay, "must be >= 0")
        need(o.warmup_epochs >= 0, f"{name}.warmup_epochs", o.warmup_epochs, "must be >= 0")
        need(0 < o.onecycle_warmup < 1, f"{name}.onecycle_warmup", o.onecycle_warmup, "must be in (0, 1)")
        need(0 < o.onecycle_start <= 1, f"{name}.onecycle_start", o.onecycle_start, "must be in (0, 1]")
        need(o.resize_from == 0 or (o.resize_from >= 32 and o.resize_from % 32 == 0), f"{name}.resize_from",
             o.resize_from, "must be 0 (off) or a multiple of 32 px")
        need(o.resize_from <= cfg.data.size, f"{name}.resize_from", o.resize_from,
             f"must not exceed data.size ({cfg.data.size})")
        need(0 < o.resize_until <= 1, f"{name}.resize_until", o.resize_until, "must be in (0, 1]")
    for name, a in (("pretrain.augment", cfg.pretrain.augment), ("train.augment", cfg.train.augment)):
        lo, hi = a.crop_scale
        need(0 < lo <= hi <= 1, f"{name}.crop_scale", a.crop_scale, "must be [low, high] with 0 < low <= high <= 1")
        if a.blur_sigma is not None:
            lo, hi = a.blur_sigma
            need(0 < lo <= hi, f"{name}.blur_sigma", a.blur_sigma, "must be [low, high] with 0 < low <= high")
        lo, hi = a.blur_sigma_rel
        need(0 < lo <= hi, f"{name}.blur_sigma_rel", a.blur_sigma_rel, "must be [low, high] with 0 < low <= high")
        need(0 <= a.blur_prob <= 1, f"{name}.blur_prob", a.blur_prob, "must be in [0, 1]")
        for key in ("rotate_deg", "brightness", "contrast", "gamma", "noise_std", "shift"):
            need(getattr(a, key) >= 0, f"{name}.{key}", getattr(a, key), "must be >= 0")
    p = cfg.pretrain
    need(p.temperature > 0, "pretrain.temperature", p.temperature, "must be > 0")
    need(p.proj_hidden >= 1, "pretrain.proj_hidden", p.proj_hidden, "must be at least 1")
    need(p.proj_dim >= 1, "pretrain.proj_dim", p.proj_dim, "must be at least 1")
    need(p.knn_k >= 0, "pretrain.knn_k", p.knn_k, "must be >= 0 (0 = no kNN probe)")
    t = cfg.train
    m = t.mgacr
    need(set(m.layers) <= {1, 2, 3, 4}, "train.mgacr.layers", m.layers, "must be among 1, 2, 3, 4")
    need(m.weight_attention >= 0, "train.mgacr.weight_attention", m.weight_attention, "must be >= 0")
    need(m.weight_feature >= 0, "train.mgacr.weight_feature", m.weight_feature, "must be >= 0")
    need(m.grad_norm_steps >= 0, "train.mgacr.grad_norm_steps", m.grad_norm_steps, "must be >= 0 (0 = off)")
    need(m.kernel_size >= 1 and m.kernel_size % 2 == 1, "train.mgacr.kernel_size", m.kernel_size,
         "must be odd and at least 1")
    need(0 <= t.loss.beta < 1, "train.loss.beta", t.loss.beta, "must be in [0, 1)")
    need(0 <= t.loss.label_smoothing < 1, "train.loss.label_smoothing", t.loss.label_smoothing, "must be in [0, 1)")
    need(0 <= t.ema_decay < 1, "train.ema_decay", t.ema_decay, "must be in [0, 1) (0 = no EMA)")
    need(0 <= t.encoder_stages <= 4, "train.encoder_stages", t.encoder_stages, "must be 0..4 (the stem and layer1..N)")
    need(t.loss.gamma >= 0, "train.loss.gamma", t.loss.gamma, "must be >= 0")
    i = t.iam
    need(i.warmup_epochs >= 0, "train.iam.warmup_epochs", i.warmup_epochs, "must be >= 0")
    need(i.iterations >= 0, "train.iam.iterations", i.iterations, "must be >= 0")
    need(i.epochs_per_iteration >= 1, "train.iam.epochs_per_iteration", i.epochs_per_iteration, "must be at least 1")
    need(0 < i.erase_threshold <= 1, "train.iam.erase_threshold", i.erase_threshold, "must be in (0, 1]")
    need(i.kp_weight >= 0, "train.iam.kp_weight", i.kp_weight, "must be >= 0")
    need(set(i.msa_layers) <= {1, 2, 3, 4}, "train.iam.msa_layers", i.msa_layers, "must be among 1, 2, 3, 4")
    need(t.can.attention_weight >= 0, "train.can.attention_weight", t.can.attention_weight, "must be >= 0")
    need(t.can.balance_gamma >= 0, "train.can.balance_gamma", t.can.balance_gamma, "must be >= 0")
    need(0 < t.target_sensitivity <= 1, "train.target_sensitivity", t.target_sensitivity, "must be in (0, 1]")
    need(r.seed >= 0, "run.seed", r.seed, "must be >= 0")
    need(r.threads >= 0, "run.threads", r.threads, "must be >= 0 (0 = the default)")
    need(r.checkpoint_minutes >= 0, "run.checkpoint_minutes", r.checkpoint_minutes, "must be >= 0 (0 = every step)")
    need(re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", r.device) is not None, "run.device", r.device,
         "must be auto, cpu, cuda, cuda:N or mps")
    if bad:
        raise ConfigError("invalid configuration: " + "; ".join(bad))
    return cfg


def preset_names() -> list[str]:
    """Names of the presets shipped in ``deeppneumonia/configs`` (the YAML files, without suffix)."""
    return sorted(p.name.removesuffix(".yaml") for p in resources.files("deeppneumonia.configs").iterdir()
                  if p.name.endswith(".yaml"))


def _read_yaml(preset: str) -> dict[str, Any]:
    """The sections of a preset name or YAML file path as a dict (an empty file gives ``{}``).

    Raises ConfigError for a missing file, an unknown preset or YAML that is not a mapping.
    """
    path = Path(preset)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {path} not found")
        text = path.read_text()
    else:
        res = resources.files("deeppneumonia.configs") / f"{preset}.yaml"
        if not res.is_file():
            raise ConfigError(f"unknown preset {preset!r}; presets: {preset_names()} (or pass a YAML path)")
        text = res.read_text()
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{preset}: the YAML must be a mapping of sections")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw)


def load_config(preset: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The validated Config of a preset (or YAML path; None: the defaults) with ``section.key=value`` overrides.

    Raises ConfigError for an unknown key, a wrong type or a value out of range.
    """
    values: dict[str, Any] = _read_yaml(preset) if preset else {}
    for text in overrides:
        path, value = parse_override(text)
        node = values
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {part} is not a section")
        node[path[-1]] = value
    return validate(_build(Config, values))


def config_from_dict(values: dict[str, Any]) -> Config:
    """Rebuild a Config from its ``to_dict()`` form (e.g. read back from a checkpoint)."""
    return validate(_build(Config, values))


__all__ = ["AugmentConfig", "CANConfig", "Config", "ConfigError", "DataConfig", "IAMConfig", "LossConfig", "MGACRConfig",
           "OptimConfig", "PretrainConfig", "RunConfig", "TrainConfig", "load_config", "validate"]
