"""Classical baselines of the paper's Table II (scikit-learn) on features a careful practitioner would use.

Features per image, from the preprocessing cache: HOG (skimage; 9 orientations, 8x8-pixel cells, 2x2
blocks) of the image at 64 px, concatenated with its 16x16 down-sampled pixels; standardised. Models:
KNN (k = 15, distance-weighted), decision tree, AdaBoost, random forest (300 trees), and a polynomial-kernel
SVM (degree 3) calibrated to probabilities (Platt scaling, 3 folds) for mAP.
Hyper-parameters are fixed a priori (no tuning on the test part).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image
from sklearn.base import ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import AdaBoostClassifier, RandomForestClassifier
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.tree import DecisionTreeClassifier

from deeppneumonia.data.batches import CachedSplit


def image_features(images: np.ndarray) -> np.ndarray:
    """(N, S, S) uint8 -> (N, D) float32: HOG at 64 px + 16x16 pixels."""
    from skimage.feature import hog

    out = []
    for img in images:
        small = np.asarray(Image.fromarray(img).resize((64, 64), Image.Resampling.BILINEAR), np.float32) / 255
        tiny = np.asarray(Image.fromarray(img).resize((16, 16), Image.Resampling.BILINEAR), np.float32) / 255
        h = hog(small, orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2), feature_vector=True)
        out.append(np.concatenate([h, tiny.ravel()]).astype(np.float32))
    return np.stack(out)


def split_features(split: CachedSplit) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, D), targets (N, C)) in the split's order (the memory map is read in ascending order)."""
    order = np.argsort(split.indices)
    f = image_features(np.asarray(split.cache.images[split.indices[order]]))
    feats = np.empty_like(f)
    feats[order] = f
    return feats, split.targets.numpy()


CLASSICAL: dict[str, Callable[[int], ClassifierMixin]] = {
    "KNN": lambda seed: KNeighborsClassifier(n_neighbors=15, weights="distance"),
    "Decision tree": lambda seed: DecisionTreeClassifier(min_samples_leaf=5, random_state=seed),
    "AdaBoost": lambda seed: AdaBoostClassifier(n_estimators=200, random_state=seed),
    "Random forest": lambda seed: RandomForestClassifier(n_estimators=300, n_jobs=-1, random_state=seed),
    "SVM (poly)": lambda seed: CalibratedClassifierCV(SVC(kernel="poly", degree=3, random_state=seed), cv=3),
}


def fit_classical(name: str, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                  seed: int = 0) -> tuple[np.ndarray, float]:
    """Fit one classical model; returns (test probabilities (N, C), training seconds)."""
    x, t = train
    c = t.shape[1]
    model = make_pipeline(StandardScaler(), CLASSICAL[name](seed))
    t0 = time.perf_counter()
    model.fit(x, t.argmax(1))
    seconds = time.perf_counter() - t0
    probs = np.zeros((len(test[0]), c))
    probs[:, model.classes_] = model.predict_proba(test[0])
    return probs, seconds


def describe() -> dict[str, Any]:
    """Each classical baseline's name and its scikit-learn estimator as text (seed 0)."""
    return {name: str(make(0)) for name, make in CLASSICAL.items()}
