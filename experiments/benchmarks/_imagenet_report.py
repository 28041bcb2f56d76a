"""What the ImageNet-scale run records and draws: per-class distributions, result parts, plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def distribution(acc: np.ndarray) -> dict:
    """Mean, median, extremes and a 20-bin histogram of per-class accuracies `[classes]`.

    ``min`` / ``max`` rather than worst / best: the worst forget accuracy is the largest, the
    worst retain accuracy the smallest.
    """
    hist, edges = np.histogram(acc, bins=20, range=(0.0, 1.0))
    return dict(
        mean=float(acc.mean()),
        median=float(np.median(acc)),
        min=float(acc.min()),
        max=float(acc.max()),
        histogram=hist.tolist(),
        bin_edges=edges.round(3).tolist(),
    )


def plot(path: Path, forget, retain, title: str) -> None:
    """Histograms of the forget and retain accuracy over the classes, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, acc, name in ((axes[0], forget, "forget"), (axes[1], retain, "retain")):
        ax.hist(acc * 100, bins=40, color="tab:red" if name == "forget" else "tab:blue")
        ax.set_xlabel(f"{name} accuracy (%)")
        ax.set_ylabel("classes")
        ax.set_title(
            f"{name}: mean {acc.mean():.1%}, worst {(acc.max() if name == 'forget' else acc.min()):.1%}"
        )
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def uva_record(args, n_choice, forget, retain, timing, sizes, caps, checked) -> dict:
    """The UvA part of the result: the chosen N_a, the distributions over classes, the work done
    (`sizes`: per-class `[classes, 4]` masked pairs, fallbacks beyond the ranking, affected and
    undecided rows, and the evaluation's own extra means), and the classes the per-class
    evaluation checked."""
    sizes, extra = sizes
    return dict(
        n_keys=args.n_keys,
        n_choice=n_choice,
        forget=distribution(forget),
        retain=distribution(retain),
        worst_forget=float(forget.max()),
        timing=timing,
        every_class=args.every_class,
        masked_pairs_mean=float(sizes[:, 0].mean()),
        beyond_ranking_mean=float(sizes[:, 1].mean()),
        affected_rows_mean=float(sizes[:, 2].mean()),
        undecided_rows_mean=float(sizes[:, 3].mean()),
        undecided_rows_max=int(sizes[:, 3].max()),
        **extra,
        checked_by_per_class=checked,
        caps=caps._asdict() if caps is not None else None,
        batch=args.eval_batch,
        rows_per_step=args.eval_rows,
    )


def statistics_record(stats) -> dict:
    """Size and fingerprint of the pair statistics, beside what a dense int32 table would take."""
    dense = 4 * stats.num_classes * stats.num_codebooks * stats.num_keys
    return dict(
        nnz=stats.nnz,
        density=stats.density,
        mib=round(stats.nbytes / 2**20, 1),
        dense_int32_mib=round(dense / 2**20, 1),
        count_dtype=str(stats.counts[0].dtype),
        sha256=stats.fingerprint(),
    )


def summary(result: dict) -> dict:
    """The issue's headline keys, and the mean forget / retain accuracy."""
    keys = (
        "train_rows",
        "classes",
        "peak_rss_mib",
        "forget_one_class_ms",
        "every_class_eval_s",
        "classes_evaluated",
        "val_accuracy",
        "probe_accuracy",
    )
    summary = {k: result[k] for k in keys}
    summary.update(
        forget_mean=result["uva"]["forget"]["mean"], retain_mean=result["uva"]["retain"]["mean"]
    )
    return summary


def model_record(cfg, value_dim: int) -> dict:
    """The paper model the run used (`cfg` is its key model's :class:`DKVBConfig`)."""
    return dict(
        codebooks=cfg.num_codebooks,
        keys=cfg.num_keys,
        key_dim=cfg.key_dim,
        top_k=cfg.top_k,
        decoder="vote",
        value_dim=value_dim,
        values="closed-form log-probabilities from the counts (exact recipe), fixed point 2^-16",
    )
