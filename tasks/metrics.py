"""Binary classification figures from a confusion matrix: shared by selection and scoring.

The matrix is ``[[tn, fp], [fn, tp]]`` (rows: true negative/positive; columns: predicted), so
counts from many batches simply add up.
"""

from __future__ import annotations

import numpy as np


def confusion(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """2 × 2 counts (int64) from boolean truth and prediction arrays."""
    truth, pred = np.asarray(truth, bool), np.asarray(pred, bool)
    return np.array([[int((~truth & ~pred).sum()), int((~truth & pred).sum())],
                     [int((truth & ~pred).sum()), int((truth & pred).sum())]], dtype=np.int64)


def classification_metrics(cm: np.ndarray) -> dict[str, float]:
    """Accuracy, and precision, recall and F1 of the positive class (0 where undefined)."""
    (tn, fp), (fn, tp) = np.asarray(cm).tolist()
    n = tn + fp + fn + tp
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": (tp + tn) / n if n else 0.0, "precision": precision, "recall": recall,
            "f1": f1, "tn": tn, "fp": fp, "fn": fn, "tp": tp}


def confusion_figure(cm: np.ndarray, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # here, not at import: pyplot alone takes ~0.8 s to import

    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(cm, cmap="Blues")
    for (i, j), n in np.ndenumerate(cm):
        ax.text(j, i, f"{n:,}", ha="center", va="center")
    ax.set_xticks([0, 1], ["neg", "pos"])
    ax.set_yticks([0, 1], ["neg", "pos"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return fig
