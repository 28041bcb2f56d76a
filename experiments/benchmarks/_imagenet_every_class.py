"""The every-class stage of ``imagenet_scale.py``: each class forgotten alone (UvA) and evaluated
on every validation row, all at once (checked against the per-class evaluation on a sample) or
class by class."""

from __future__ import annotations

import numpy as np

from dkvb_jax.unlearning import all_classes, stored_eval


def stage(args, store, labels, classes, mesh, caps, clock):
    """Forget and retain accuracy `[classes]` each, the sizes, the caps and the classes the
    per-class evaluation checked; the evaluation is timed as the stage ``every class``."""
    with clock("every class"):
        forget, retain, sizes, caps = _evaluate(args, store, labels, classes, mesh, caps)
    with clock("every class: per-class check"):
        checked, caps = _check(args, store, classes, forget, retain, labels, mesh, caps)
    return forget, retain, sizes, caps, checked


def _evaluate(args, store, labels, classes, mesh, caps):
    """Forget and retain accuracy of each class forgotten alone (UvA), the sizes touched
    (per class: masked pairs, fallbacks beyond the ranking, affected and undecided rows, and
    the undecided rows' masked pairs or the pairs past the first fallback), and the caps.

    ``--every-class at-once`` (:func:`all_classes.evaluate_all_classes`) is checked against
    the per-class evaluation on `--check-classes` classes spread over the evaluated ones."""
    if args.every_class == "per-class":
        counts, sizes, caps = stored_eval.evaluate_every_class(
            store, classes, args.n_keys, caps=caps, mesh=mesh, batch=args.eval_batch
        )
        extra = dict(undecided_pairs_mean=float(sizes[:, 4].mean()))
    else:
        counts, at_once = all_classes.evaluate_all_classes(
            store, classes, args.n_keys, rows=args.eval_rows, mesh=mesh
        )
        sizes = np.stack([at_once.pairs, at_once.beyond, at_once.rows, at_once.undecided], -1)
        extra = dict(past_first_fallback_mean=float(at_once.deeper.mean()))
    return (*_accuracies(counts, labels, classes), (sizes, extra), caps)


def _accuracies(counts, labels, classes):
    """Forget and retain accuracy `[len(classes)]` each from correct rows `[len(classes), 2]`."""
    forget_rows = np.bincount(labels, minlength=max(classes) + 1)[classes]
    return counts[:, 0] / forget_rows, counts[:, 1] / (len(labels) - forget_rows)


def _check(args, store, classes, forget, retain, labels, mesh, caps):
    """The per-class evaluation of `--check-classes` of the classes: the same accuracies, or an
    error. Returns the classes checked and the caps."""
    if args.every_class == "per-class" or args.check_classes == 0:
        return [], caps
    step = max(1, len(classes) // args.check_classes)
    sample = classes[::step][: args.check_classes]
    counts, _, caps = stored_eval.evaluate_every_class(
        store, sample, args.n_keys, caps=caps, mesh=mesh, batch=args.eval_batch
    )
    at = [classes.index(c) for c in sample]
    want_f, want_r = _accuracies(counts, labels, sample)
    if not (np.array_equal(want_f, forget[at]) and np.array_equal(want_r, retain[at])):
        raise RuntimeError(f"the per-class evaluation disagrees on classes {sample}")
    return [int(c) for c in sample], caps
