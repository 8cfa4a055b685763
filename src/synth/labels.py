"""The label model: latent severities, p(written label | severity) and the metric's optimum."""
from __future__ import annotations

import numpy as np

from ..core.constants import LABEL_COLUMNS, REAL_CLASS_FREQUENCIES, SAMPLE_WEIGHTS


def label_probabilities(severity: np.ndarray, thresholds=(0.4, 0.7), reader_noise: float = 0.05) -> np.ndarray:
    """p(written label | latent severity) as (..., 3): ordinal logistic with two thresholds."""
    s = np.asarray(severity, dtype=float)[..., None]
    t = np.asarray(thresholds, dtype=float)
    above = 1.0 / (1.0 + np.exp(-(s - t) / reader_noise))  # P(label >= moderate), P(label >= severe)
    p = np.concatenate([1 - above[..., :1], above[..., :1] - above[..., 1:], above[..., 1:]], axis=-1)
    return np.clip(p, 0.0, 1.0)


def metric_optimal(p: np.ndarray) -> np.ndarray:
    """Posterior class probabilities -> the prediction minimising the expected 1/2/4-weighted log loss."""
    q = np.asarray(p, dtype=float) * np.asarray(SAMPLE_WEIGHTS)
    return q / q.sum(-1, keepdims=True)


def draw_severities(
    pattern: np.ndarray, rng: np.random.Generator, thresholds=(0.4, 0.7)
) -> np.ndarray:
    """Latent severity per label column, uniform inside the band of the pattern's class (NaN: normal band)."""
    edges = np.array([0.0, thresholds[0], thresholds[1], 1.0])
    cls = np.where(np.isnan(pattern), 0, pattern).astype(int)
    return rng.uniform(edges[cls], edges[cls + 1])


def fallback_patterns(n: int, rng: np.random.Generator) -> np.ndarray:
    """Independent labels per column from the real group marginals, for when no train.csv is at hand."""
    out = np.empty((n, len(LABEL_COLUMNS)))
    for j, col in enumerate(LABEL_COLUMNS):
        group = next(g for g in REAL_CLASS_FREQUENCIES if g in col)
        out[:, j] = rng.choice(3, size=n, p=REAL_CLASS_FREQUENCIES[group])
    return out


# ----------------------------------------------------------------------------------------------------
# Anatomy
