"""Exact fitting, incremental learning and unlearning of DKVB values from label counts.

    variables, stats = fit_exact(model, variables, x_train, y_train, ids)
    variables, stats, record = remove_examples(variables, stats, forget_ids)
    # variables['params']['values'] is now bit-identical to fit_exact on the retained data.

Only ``variables['params']['values']`` ever changes; keys, projection and masks are untouched.
Removal uses the codes stored in :class:`LabelStats`: no encoder pass, no lookup. The pure
building blocks (:func:`counts_from_codes`, :func:`derive_values`, :func:`values_without`)
compose with ``jax.jit`` and ``jax.vmap`` (e.g. one call for many forget sets).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dkvb_jax import _fingerprint, _validation
from dkvb_jax.errors import InputError, InputTypeError
from dkvb_jax.exact.estimators import EstimatorConfig, derive_values
from dkvb_jax.exact.statistics import (
    LabelStats,
    StatsConfig,
    counts_from_codes,
    fingerprint,
    subtract_rows,
)
from dkvb_jax.model import DKVB
from dkvb_jax.provenance import Certificate, Part, Provenance, Rows, certify, shown
from dkvb_jax.training.codes import compute_codes
from dkvb_jax.unlearning.audit import AuditRecord, make_record

Data = np.ndarray | jax.Array | tuple[jax.Array, jax.Array]
_INT32_MAX = np.iinfo(np.int32).max
DEFAULT_ESTIMATOR = EstimatorConfig()
DEFAULT_STATS = StatsConfig()


# --------------------------------------------------------------------------- pure functions


@functools.partial(jax.jit, static_argnames=("config",))
def _derive(counts, config):
    return derive_values(counts, config)


@functools.partial(jax.jit, static_argnames=("num_keys", "num_classes"))
def _count(indices, labels, rank_weights, weights, num_keys, num_classes):
    return counts_from_codes(indices, labels, num_keys, num_classes, rank_weights, weights)


def values_without(
    stats: LabelStats, forget: jax.Array, config: EstimatorConfig = DEFAULT_ESTIMATOR
) -> tuple[jax.Array, jax.Array]:
    """Values after removing the store rows flagged in `forget`; pure, jit- and vmap-able.

    Args:
      stats: The label statistics.
      forget: bool `[examples]` over the store rows (vmap over a leading axis for many sets).
      config: The estimator (static under jit).

    Returns:
      float32 values `[codebooks, keys, classes]` and a bool scalar, False if a count went
      negative (impossible for rows of the store; a guard against corrupted state).
    """
    counts, ok = subtract_rows(stats.counts, stats.codes, stats.labels, stats.rank_weights, forget)
    return derive_values(counts, config), ok


# --------------------------------------------------------------------------- host-side checks


def _check_model(model: DKVB, variables: dict) -> None:
    cfg = model.config
    if cfg.decoder != "vote":
        raise ValueError(
            f"Exact values need the vote decoder (logits = mean retrieved value), but the model has "
            f"decoder={cfg.decoder!r}, whose weights would be fitted on all data and stay so. Use "
            "DKVBConfig(decoder='vote')."
        )
    _check_values(variables, (cfg.num_codebooks, cfg.num_keys, cfg.num_classes))


def _check_values(variables: dict, shape: tuple[int, ...]) -> None:
    if not hasattr(variables, "keys") or not {"params", "frozen", "mask"} <= set(variables):
        raise TypeError(
            "variables must be a DKVB variables dict with 'params', 'frozen' and 'mask' "
            "(from model.init)."
        )
    got = tuple(variables["params"]["values"].shape)
    if got != tuple(shape):
        raise ValueError(
            f"variables['params']['values'] has shape {got} but the statistics/model expect "
            f"{tuple(shape)} [codebooks, keys, classes]; these variables belong to another model."
        )


def _as_ids(ids, n: int | None, name: str = "ids") -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise TypeError(
            f"{name} must be a 1-D array of integer example ids, got {arr.dtype} {arr.shape}."
        )
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} entries but there are {n} examples.")
    if arr.size and (arr.min() < 0 or arr.max() > _INT32_MAX):
        raise ValueError(f"{name} must lie in [0, {_INT32_MAX}], got [{arr.min()}, {arr.max()}].")
    return arr.astype(np.int32)


def _codes_of(model: DKVB, variables: dict, data: Data, batch_size: int) -> np.ndarray:
    """int32 codes `[n, codebooks, top_k]` (-1 invalid) from embeddings or precomputed codes."""
    cfg = model.config
    if isinstance(data, tuple):
        if len(data) != 2:
            raise InputTypeError("data must be embeddings, codes, or a pair (indices, valid).")
        indices, valid = data
        _validation.check_codes(indices, valid, cfg.num_keys, name="data (codes)")
    elif hasattr(data, "dtype") and np.issubdtype(data.dtype, np.integer):
        indices = np.asarray(data)
        # -1 is the one "no key" marker; any other negative index would count at a wrapped key.
        if indices.size and int(indices.min()) < -1:
            raise InputError(
                f"data (codes) holds the index {int(indices.min())}: codes are key ids in "
                f"[0, num_keys={cfg.num_keys}), or -1 for an invalid entry."
            )
        valid = indices >= 0
    else:
        _validation.check_embeddings(data, cfg.embed_dim, allow_tokens=False)
        indices, valid = compute_codes(model, variables, data, batch_size=batch_size)
    indices = np.where(np.asarray(valid), np.asarray(indices), -1)
    want = (cfg.num_codebooks, cfg.top_k)
    if indices.ndim != 3 or tuple(indices.shape[1:]) != want:
        raise ValueError(
            f"codes must have shape [examples, {want[0]}, {want[1]}] (codebooks, top_k), got "
            f"{tuple(indices.shape)}."
        )
    # Checked before the int32 cast, which would wrap an index of 2**32 + 3 onto key 3.
    if indices.size and int(indices.max()) >= cfg.num_keys:
        raise ValueError(f"codes must be < num_keys={cfg.num_keys}, got {int(indices.max())}.")
    return indices.astype(np.int32)


def _bucket(n: int) -> int:
    """Padded row count: powers of two bound the number of compiled shapes."""
    return max(8, 1 << int(np.ceil(np.log2(max(n, 1)))))


def _count_rows(codes: np.ndarray, labels: np.ndarray, rank_weights, num_keys, num_classes):
    """Counts of host rows, padded with rows that count nothing."""
    size = _bucket(codes.shape[0])
    padded = np.full((size, *codes.shape[1:]), -1, np.int32)
    padded[: codes.shape[0]] = codes
    lab = np.zeros((size,), np.int32)
    lab[: labels.shape[0]] = labels
    return _count(jnp.asarray(padded), jnp.asarray(lab), rank_weights, None, num_keys, num_classes)


def _check_fingerprint(variables: dict, stats: LabelStats, verify_keys: bool) -> None:
    if verify_keys and stats.fingerprint and fingerprint(variables) != stats.fingerprint:
        raise ValueError(
            "The keys, projection or search mask of `variables` differ from those the stored codes "
            "were computed under, so the codes are stale and removal would not be exact. Refit "
            "with fit_exact on the current variables (or pass verify_keys=False if only unrelated "
            "leaves changed)."
        )


def _with_values(variables: dict, values: jax.Array) -> dict:
    return {**variables, "params": {**variables["params"], "values": values}}


def _counts_hash(counts: jax.Array) -> str:
    return _fingerprint.sha256(counts, length=16)


def _record(method, cert, ids, classes, estimator, before, after, c0, c1, t0):
    """The shared :class:`AuditRecord`, with the certificate; cost goes in its ``params``."""
    jax.block_until_ready(after["params"]["values"])
    seconds = time.perf_counter() - t0
    params = {
        "estimator": dataclasses.asdict(estimator),
        "num_examples": int(ids.size),
        "update_seconds": seconds,
        "counts_before": _counts_hash(c0),
        "counts_after": _counts_hash(c1),
    }
    return make_record(
        method=method,
        params=params,
        before=before,
        after=after,
        certificate=cert,
        forgotten_classes=classes,
        forgotten_examples=None if method == "exact_add" else np.sort(ids),
        effect={"added_examples": np.sort(ids).tolist()} if method == "exact_add" else None,
    )


# --------------------------------------------------------------------------- public API


def fit_exact(
    model: DKVB,
    variables: dict,
    data: Data,
    labels: np.ndarray | jax.Array,
    ids: np.ndarray | Sequence[int] | None = None,
    *,
    estimator: EstimatorConfig = DEFAULT_ESTIMATOR,
    stats_config: StatsConfig = DEFAULT_STATS,
    provenance: Provenance | None = None,
    batch_size: int = 1024,
) -> tuple[dict, LabelStats]:
    """Fits the values in closed form from label counts; keys must already be fitted (frozen).

    Args:
      model: A DKVB with the vote decoder.
      variables: Its variables; only ``params['values']`` is replaced.
      data: Embeddings `[n, embed_dim]`, or codes: int `[n, codebooks, top_k]` (-1 invalid) or an
        `(indices, valid)` pair from :func:`dkvb_jax.compute_codes`.
      labels: int `[n]`.
      ids: unique int example ids `[n]` (default ``0..n-1``), used to name examples to forget.
      estimator: How values are derived from counts.
      stats_config: How examples are counted (top-k rank weights).
      provenance: what the model's frozen parts were fitted on, as recorded when they were
        fitted (``FittedDKVB.provenance``); `ids` name rows of ``provenance.data``. Removals are
        certified from it (:func:`dkvb_jax.provenance.certify`); None: no removal is certified.
      batch_size: rows per lookup when `data` are embeddings.

    Returns:
      New variables and the :class:`LabelStats` to keep alongside them.
    """
    _check_model(model, variables)
    cfg = model.config
    codes = _codes_of(model, variables, data, batch_size)
    n = codes.shape[0]
    _validation.check_labels(labels, cfg.num_classes, n=n)
    ids = _as_ids(np.arange(n) if ids is None else ids, n)
    uniq, cnt = np.unique(ids, return_counts=True)
    if (cnt > 1).any():
        raise ValueError(f"ids must be unique; repeated: {shown(uniq[cnt > 1])}.")
    if provenance is not None:
        if not isinstance(provenance, Provenance):
            raise TypeError(
                f"provenance must be a dkvb_jax.provenance.Provenance or None, got "
                f"{type(provenance).__name__}."
            )
        provenance = provenance.with_part(
            Part("values", "label_counts", (Rows(provenance.data, ids, labels=True),), True)
        )
    rank_weights = stats_config.weights_for(cfg.top_k)
    labels = np.asarray(labels, np.int32)
    counts = _count_rows(codes, labels, rank_weights, cfg.num_keys, cfg.num_classes)
    stats = LabelStats(
        counts=counts,
        codes=jnp.asarray(codes),
        labels=jnp.asarray(labels),
        ids=jnp.asarray(ids),
        rank_weights=rank_weights,
        provenance=provenance,
        fingerprint=fingerprint(variables),
    )
    return _with_values(variables, _derive(counts, estimator)), stats


def add_examples(
    model: DKVB,
    variables: dict,
    stats: LabelStats,
    data: Data,
    labels: np.ndarray | jax.Array,
    ids: np.ndarray | Sequence[int],
    *,
    estimator: EstimatorConfig = DEFAULT_ESTIMATOR,
    batch_size: int = 1024,
    verify_keys: bool = True,
) -> tuple[dict, LabelStats, AuditRecord]:
    """Incremental learning: counts the new examples in and re-derives the values.

    Equals :func:`fit_exact` on the old data followed by the new (store rows appended).

    Raises:
      ValueError: an id is already in the statistics, or the keys changed since the fit.
    """
    t0 = time.perf_counter()
    _check_model(model, variables)
    _check_fingerprint(variables, stats, verify_keys)
    cfg = model.config
    codes = _codes_of(model, variables, data, batch_size)
    n = codes.shape[0]
    _validation.check_labels(labels, cfg.num_classes, n=n)
    ids = _as_ids(ids, n)
    uniq, cnt = np.unique(ids, return_counts=True)
    if (cnt > 1).any():
        raise ValueError(f"ids must be unique; repeated: {shown(uniq[cnt > 1])}.")
    clash = np.intersect1d(ids, np.asarray(stats.ids))
    if clash.size:
        raise ValueError(
            f"add_examples: ids {shown(clash)} are already counted; remove them first or give "
            "new ids."
        )
    labels = np.asarray(labels, np.int32)
    prov = stats.provenance
    if prov is not None:
        # The new rows are counted into the values, so the values' record grows by them.
        (values_rows,) = prov.part("values").rows
        grown = np.concatenate([values_rows.ids, ids])
        prov = prov.with_part(
            Part("values", "label_counts", (Rows(prov.data, grown, labels=True),), True)
        )
    counts = stats.counts + _count_rows(
        codes, labels, stats.rank_weights, cfg.num_keys, cfg.num_classes
    )
    new = stats.replace(
        counts=counts,
        codes=jnp.asarray(np.concatenate([np.asarray(stats.codes), codes])),
        labels=jnp.asarray(np.concatenate([np.asarray(stats.labels), labels])),
        ids=jnp.asarray(np.concatenate([np.asarray(stats.ids), ids])),
        provenance=prov,
    )
    values = _derive(counts, estimator)
    out = _with_values(variables, values)
    cert = Certificate(
        certified=False,
        values_exact=True,
        reason="rows added, nothing forgotten: the values equal a closed-form fit on the union",
    )
    rec = _record("exact_add", cert, ids, None, estimator, variables, out, stats.counts, counts, t0)
    return out, new, rec


def remove_examples(
    variables: dict,
    stats: LabelStats,
    ids: np.ndarray | Sequence[int],
    *,
    estimator: EstimatorConfig = DEFAULT_ESTIMATOR,
    verify_keys: bool = True,
    _method: str = "exact_remove",
    _classes: tuple[int, ...] | None = None,
) -> tuple[dict, LabelStats, AuditRecord]:
    """Forgets examples by id: subtracts their stored counts and re-derives the values.

    No encoder pass and no lookup: the examples' codes come from the store, and their rows are
    deleted from it. With the keys fixed, the new values (and statistics) are bit-identical to
    :func:`fit_exact` on the remaining examples. A request is a set: repeated ids count once.

    Args:
      variables: The model's variables (from :func:`fit_exact` / earlier requests).
      stats: Its label statistics.
      ids: ids of the examples to forget.
      estimator: The estimator (use the one the model was fitted with).
      verify_keys: Check that keys/projection/search mask are those the codes were computed under.

    Returns:
      New variables, new statistics and an :class:`AuditRecord` whose ``certificate`` is
      derived from ``stats.provenance`` (:func:`dkvb_jax.provenance.certify`).

    Raises:
      ValueError: empty request, or ids that are not counted (never added or already removed);
        the message names them.
    """
    t0 = time.perf_counter()
    c, k, y = stats.counts.shape
    _check_values(variables, (c, k, y))
    _check_fingerprint(variables, stats, verify_keys)
    ids = np.unique(_as_ids(ids, None))
    if ids.size == 0:
        raise ValueError("remove_examples: the forget set is empty; pass at least one example id.")
    store = np.asarray(stats.ids)
    order = np.argsort(store, kind="stable")
    pos = np.minimum(np.searchsorted(store[order], ids), max(store.size - 1, 0))
    found = store[order][pos] == ids if store.size else np.zeros(ids.shape, bool)
    missing = ids[~found]
    if missing.size:
        raise ValueError(
            f"remove_examples: ids {shown(missing)} are not counted in the statistics (never "
            "added, or already removed); removing them would make counts negative. Nothing was "
            "changed."
        )
    rows = np.sort(order[pos])
    stored_codes, stored_labels = np.asarray(stats.codes), np.asarray(stats.labels)
    counts = stats.counts - _count_rows(
        stored_codes[rows], stored_labels[rows], stats.rank_weights, k, y
    )
    if int(counts.min()) < 0:  # impossible for stored rows; guards a corrupted LabelStats
        raise ValueError(
            f"remove_examples: counts went negative removing ids {shown(ids)}; the statistics do "
            "not match their code store (corrupted state). Refit with fit_exact."
        )
    keep = np.ones(store.size, bool)
    keep[rows] = False
    prov = stats.provenance
    if prov is not None:
        prov = prov.with_part(
            Part("values", "label_counts", (Rows(prov.data, store[keep], labels=True),), True)
        )
    # Store edits run on the host: shapes change with every request, and eager device ops would
    # compile once per new shape.
    new = stats.replace(
        counts=counts,
        codes=jnp.asarray(stored_codes[keep]),
        labels=jnp.asarray(stored_labels[keep]),
        ids=jnp.asarray(store[keep]),
        provenance=prov,
    )
    values = _derive(counts, estimator)
    out = _with_values(variables, values)
    cert = certify(stats.provenance, ids)
    rec = _record(_method, cert, ids, _classes, estimator, variables, out, stats.counts, counts, t0)
    return out, new, rec


def remove_classes(
    variables: dict,
    stats: LabelStats,
    classes: int | Sequence[int],
    *,
    estimator: EstimatorConfig = DEFAULT_ESTIMATOR,
    verify_keys: bool = True,
) -> tuple[dict, LabelStats, AuditRecord]:
    """Removes every counted example of the given classes (exact class unlearning).

    The class-level form of :func:`remove_examples`, with its `(variables, stats, record)`
    result; masking's :func:`dkvb_jax.forget_classes` is another operation. Equals
    :func:`fit_exact` on the other classes' examples; with the default estimator
    (``absent_class_value``) the model then never predicts a forgotten class.

    Raises:
      ValueError: a class out of range, no classes, forgetting every class, or a class with no
        counted example.
    """
    y = stats.num_classes
    cls = np.atleast_1d(np.asarray(classes))
    if cls.size == 0 or not np.issubdtype(cls.dtype, np.integer):
        raise ValueError(f"classes must be one or more integer class ids, got {classes!r}.")
    if cls.min() < 0 or cls.max() >= y:
        raise ValueError(f"classes must lie in [0, {y}), got {sorted(set(cls.tolist()))}.")
    cls = np.unique(cls)
    if cls.size == y:
        raise ValueError(f"remove_classes: forgetting all {y} classes leaves nothing to predict.")
    labels = np.asarray(stats.labels)
    empty = [int(c) for c in cls if not (labels == c).any()]
    if empty:
        raise ValueError(
            f"remove_classes: classes {empty} have no counted examples (never added or already "
            "forgotten)."
        )
    ids = np.asarray(stats.ids)[np.isin(labels, cls)]
    return remove_examples(
        variables,
        stats,
        ids,
        estimator=estimator,
        verify_keys=verify_keys,
        _method="exact_forget_classes",  # the name saved audit records carry
        _classes=tuple(int(c) for c in cls),
    )
