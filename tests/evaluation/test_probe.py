"""The encoder probe: each encoder paired with its own random initialisation, pooled over several encoders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from deeppneumonia.data.sources import load_source
from deeppneumonia.data.splits import patient_split
from deeppneumonia.errors import ConfigError
from deeppneumonia.evaluation.probe import probe_encoder, probe_encoders
from deeppneumonia.models.checkpoint import save_weights
from deeppneumonia.models.factory import build_classifier, encoder_state
from tests.conftest import make_lesion_csv


@pytest.fixture(scope="module")
def lesion_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lesion_csv(tmp_path_factory.mktemp("lesions"), n=40, size=32)


def write_encoder(run: Path, init_seed: int) -> Path:
    """A Stage I-style encoder file whose weights are a random initialisation drawn with ``init_seed``."""
    torch.manual_seed(init_seed)
    model = build_classifier(1, "resnet18")
    path = run / "pretrain" / "encoder.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_weights(path, encoder_state(model), {"kind": "encoder", "arch": "resnet18", "in_chans": 1, "size": 32,
                                              "resize": "squash", "mean": 0.5, "std": 0.25})
    return path


def probe(paths: list[Path], data: Path, tmp_path: Path) -> dict:
    return probe_encoders(paths, data, cache_dir=tmp_path / "cache", device="cpu", n_boot=100)


def test_each_encoder_is_paired_with_its_own_random_init(tmp_path: Path, lesion_data: Path) -> None:
    # encoder i holds exactly the weights of random init seed i, so every paired difference is exactly 0; pairing all
    # encoders with one random init (seed 0) would give encoder 1 a nonzero difference
    paths = [write_encoder(tmp_path / f"e{i}", i) for i in range(2)]
    res = probe(paths, lesion_data, tmp_path)
    assert len(res["encoders"]) == 2 and res["scored_images"] > 0
    for row in res["encoders"]:
        assert row["pretrained"] == row["random_init"]
        assert all(v == (0.0, 0.0, 0.0) for v in row["difference"].values())
    assert set(res["pooled"]) == {"knn_accuracy", "knn_balanced_accuracy", "linear_accuracy",
                                  "linear_balanced_accuracy"}
    assert all(v == (0.0, 0.0, 0.0) for v in res["pooled"].values())


def test_the_pooled_difference_is_the_mean_over_encoders(tmp_path: Path, lesion_data: Path) -> None:
    paths = [write_encoder(tmp_path / f"e{i}", s) for i, s in enumerate((7, 8, 9))]
    res = probe(paths, lesion_data, tmp_path)
    for key, (mean, lo, hi) in res["pooled"].items():
        rows = [row["difference"][key][0] for row in res["encoders"]]
        assert mean == pytest.approx(np.mean(rows))
        assert lo <= mean <= hi
    one = probe_encoder(paths[0], lesion_data, cache_dir=tmp_path / "cache", device="cpu", n_boot=100)
    assert one["difference"] == res["encoders"][0]["difference"]  # the single-encoder form is the first row


def test_encoders_of_different_splits_are_refused(tmp_path: Path, lesion_data: Path) -> None:
    a, b = write_encoder(tmp_path / "a", 0), write_encoder(tmp_path / "b", 1)
    sp = patient_split(load_source(lesion_data), 0.25, 0.25, 3)
    ids = [r.image_id for r in load_source(lesion_data).records]
    (tmp_path / "b" / "split.json").write_text(json.dumps({k: [ids[i] for i in getattr(sp, k)]
                                                          for k in ("train", "val", "test")}))
    with pytest.raises(ConfigError, match="another split"):
        probe([a, b], lesion_data, tmp_path)


def test_the_linear_probe_chooses_its_regularisation_on_the_training_patients() -> None:
    # five weakly informative features among 50 and 200 training images: C = 1 fits the noise, the
    # cross-validated probe picks a stronger L2 and scores higher on fresh images
    from deeppneumonia.evaluation.probe import LINEAR_CS, linear_probe

    rng = np.random.default_rng(0)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 2, n)
        x = rng.normal(size=(n, 50))
        x[:, :5] += 0.5 * (2 * y - 1)[:, None]
        return x, y

    (x, y), (xt, yt) = draw(200), draw(4000)
    patients = np.repeat(np.arange(100), 2)  # two images per patient: folds never split one
    cv = linear_probe(x, y, patients)
    chosen = cv.best_params_["logisticregression__C"]
    assert chosen in LINEAR_CS and chosen < 1.0
    fixed = linear_probe(x, y, patients, c=1.0)
    assert fixed.named_steps["logisticregression"].C == 1.0
    assert (cv.predict(xt) == yt).mean() > (fixed.predict(xt) == yt).mean() + 0.02
    for train, held in cv.cv.split(x, y, patients):
        assert not set(patients[train]) & set(patients[held])
