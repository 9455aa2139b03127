from __future__ import annotations

from pathlib import Path

import pytest

from deeppneumonia.config import Config, config_from_dict, load_config, preset_names
from deeppneumonia.errors import ConfigError


def test_presets_load_and_overrides_apply() -> None:
    assert {"quick", "paper", "siim-cpu"} <= set(preset_names())
    cfg = load_config("quick", ["train.optim.epochs=3", "train.loss.gamma=1.5", "train.mgacr.layers=[3, 4]",
                                "data.size=96", "train.encoder=null"])
    assert cfg.train.optim.epochs == 3 and cfg.train.loss.gamma == 1.5 and cfg.train.mgacr.layers == (3, 4)
    assert cfg.data.size == 96 and cfg.data.path == "sample:kermany"
    assert load_config("quick-boxes").data.path == "sample:nih"
    # untouched nested values keep the dataclass defaults
    assert cfg.train.optim.momentum == 0.9
    paper = load_config("paper")
    assert paper.data.size == 224 and paper.train.optim.batch_size == 16 and paper.pretrain.temperature == 0.2


def test_floats_written_without_a_dot_are_numbers() -> None:
    # PyYAML (YAML 1.1) resolves 5e-4 to the string "5e-4"; a number field takes it as the number it means
    cfg = load_config("quick", ["pretrain.optim.weight_decay=5e-4", "train.optim.lr=2E-2", "train.loss.gamma=1.5e0"])
    assert cfg.pretrain.optim.weight_decay == 5e-4 and cfg.train.optim.lr == 0.02 and cfg.train.loss.gamma == 1.5
    with pytest.raises(ConfigError, match="expected a number"):
        load_config("quick", ["train.optim.lr=5e"])
    assert load_config("quick", ["run.out_dir=1e3"]).run.out_dir == "1e3"  # a string field keeps the string


@pytest.mark.parametrize("override, message", [
    ("train.optim.epoch=3", "unknown key"),
    ("train.optim.epochs=three", "expected an integer"),
    ("train.loss.kind=mse", "not one of"),
    ("train.mgacr.attention=1", "expected true/false"),
    ("nonsense", "section.key=value"),
    ("train.optim.resize_from=48", "multiple of 32"),
    ("pretrain.optim.resize_from=512", "must not exceed data.size"),
    ("train.optim.resize_until=0", r"must be in \(0, 1\]"),
])
def test_bad_overrides_are_named(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config("quick", [override])


def test_yaml_file_and_roundtrip(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  loss: {kind: ce}\n")
    cfg = load_config(str(p))
    assert cfg.train.loss.kind == "ce"
    assert config_from_dict(cfg.to_dict()) == cfg
    assert Config() == load_config(None)
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config("no-such-preset")


def test_method_settings_and_their_defaults() -> None:
    cfg = load_config(None)
    m = cfg.train.mgacr
    assert (m.form, m.head, m.no_box, m.negative_class, m.grad_norm_steps) == ("robust", "conv1x1", "by_class", None, 2)
    assert cfg.train.best_metric == "study_map" and cfg.pretrain.select == "last"
    assert cfg.pretrain.augment.blur_sigma is None and cfg.pretrain.augment.crop_scale[0] >= 0.5
    assert load_config("paper").train.mgacr.form == "paper"
    c128 = load_config("siim-128-cpu")
    assert c128.data.size == 128 and c128.train.mgacr.layers == (2, 3) and c128.train.mgacr.form == "robust"
    k128 = load_config("kermany-128-cpu")  # Kermany has one image per study: selection by the image mAP
    assert k128.data.size == 128 and k128.train.best_metric == "map" and k128.pretrain.select == "last"
    over = load_config(None, ["train.mgacr.form=paper", "train.mgacr.head=cbam", "train.mgacr.no_box=zero_mask",
                              "train.mgacr.negative_class=Normal", "pretrain.select=val_loss",
                              "pretrain.augment.blur_sigma=[0.1, 1.5]"])
    assert over.train.mgacr.head == "cbam" and over.pretrain.augment.blur_sigma == (0.1, 1.5)
    for bad in ("train.mgacr.form=literal", "train.mgacr.head=mlp", "pretrain.select=best"):
        with pytest.raises(ConfigError, match="not one of"):
            load_config(None, [bad])


def test_full_method_preset_is_what_the_five_seed_arm_ran() -> None:
    # siim-full-cpu documents the `fulls12` arm of scripts/mgacr_heads.sh (siim-cpu + these overrides; `fullsfit12`
    # adds train.final_fit=true): if either drifts, the preset no longer computes the recorded numbers
    arm = load_config("siim-cpu", [
        "pretrain.optim.lr=0.06", "pretrain.optim.weight_decay=5e-4", "train.pretrained=true",
        "train.loss.kind=cb_focal", "train.mgacr.layers=[2,3]", "train.mgacr.weight_attention=3",
        "train.mgacr.weight_feature=1", "train.mgacr.head=conv1x1", "train.encoder_rescale=false",
        "train.optim.epochs=12", "run.out_dir=runs/siim-full-cpu"])
    assert load_config("siim-full-cpu") == arm
    script = (Path(__file__).parents[1] / "scripts" / "mgacr_heads.sh").read_text()
    assert "pre=(pretrain.optim.lr=0.06 pretrain.optim.weight_decay=5e-4)" in script
    assert "longer=(train.optim.epochs=12)" in script
    # the library default for Stage I is the same SGD recipe (lr 0.3 / wd 1e-5 are LARS values)
    default = load_config(None).pretrain.optim
    assert (default.lr, default.weight_decay) == (0.06, 5e-4)
