"""Linear probe: the accuracy a linear classifier reaches on frozen embeddings.

The yardstick for a DKVB model on the same embeddings: scikit-learn's multinomial logistic
regression on standardised features, as in the usual linear-probe protocol.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    """Train/test accuracy of the probe and its fit time in seconds."""

    train_accuracy: float
    test_accuracy: float
    fit_seconds: float
    regularisation: float


def linear_probe(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    regularisation: float = 1.0,
    max_iter: int = 1000,
) -> ProbeResult:
    """Fits a logistic-regression probe on `[n, dim]` embeddings and reports its accuracy.

    Args:
      x_train, y_train: training embeddings `[n, dim]` and int labels `[n]`.
      x_test, y_test: test embeddings and labels.
      regularisation: inverse L2 strength `C` of scikit-learn's LogisticRegression.
      max_iter: L-BFGS iterations.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(x_train) == 0 or len(x_test) == 0:
        raise ValueError("linear_probe needs non-empty train and test sets.")
    start = time.perf_counter()
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=regularisation, max_iter=max_iter))
    clf.fit(np.asarray(x_train, np.float32), np.asarray(y_train))
    seconds = time.perf_counter() - start
    return ProbeResult(
        train_accuracy=float(clf.score(x_train, y_train)),
        test_accuracy=float(clf.score(x_test, y_test)),
        fit_seconds=seconds,
        regularisation=regularisation,
    )
