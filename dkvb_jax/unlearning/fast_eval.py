"""Evaluating many unlearned variants at once from codes computed a single time.

A search mask changes an input's codes (it falls back to its next-nearest active key), so
evaluating an unlearned model normally needs a fresh nearest-key search. But the next-nearest
active key is always among the input's `depth` nearest keys of the unmasked ranking when at
most `depth - top_k` of them are masked. Ranking each evaluation input's `depth` nearest keys
once therefore makes every later evaluation a gather: exact, cheap, and `vmap`-able over forget
classes or over N.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dkvb_jax import _batching, _validation
from dkvb_jax.errors import InputError
from dkvb_jax.model import DKVB
from dkvb_jax.model.lookup import nearest_keys
from dkvb_jax.unlearning import _checks, masking
from dkvb_jax.unlearning import selection as sel_lib
from dkvb_jax.unlearning.registry import UVA, get_method, masking_methods
from dkvb_jax.unlearning.spec import ForgetData, UnlearningMethod, select_over_sets, stack_sets
from dkvb_jax.unlearning.unlearn import check_size


def _rank(model, variables, xb, depth):
    """The `depth` nearest active keys of each row of `xb`: a :class:`Lookup`."""
    cfg = model.config
    q = model.apply(variables, xb, method=DKVB.queries)
    return nearest_keys(
        q,
        variables["frozen"]["keys"],
        variables["mask"]["search"],
        top_k=depth,
        chunk=cfg.lookup_chunk,
        memory_mb=cfg.lookup_memory_mb,
    )


@functools.partial(jax.jit, static_argnames=("model", "depth", "batch_size"))
def _ranked(model, variables, x, depth, batch_size):
    def rows(xb):
        res = _rank(model, variables, xb, depth)
        return res.indices, res.valid

    return _batching.batched_apply(rows, x, batch_size)


def ranked_codes(
    model: DKVB, variables: dict, x, depth: int, *, batch_size: int = 1024
) -> tuple[jax.Array, jax.Array]:
    """The `depth` nearest active keys of every input, nearest first.

    Returns:
      indices int32 `[n, codebooks, depth]` (-1 where invalid) and valid bool, same shape.
    """
    _validation.check_embeddings(x, model.config.embed_dim, allow_tokens=False)
    depth = int(min(max(depth, model.config.top_k), model.config.num_keys))
    return _ranked(model, variables, jnp.asarray(x), depth, batch_size)


def codes_under_mask(
    ranked: jax.Array, ranked_valid: jax.Array, search_mask: jax.Array, top_k: int
) -> tuple[jax.Array, jax.Array]:
    """Codes after masking: the first `top_k` unmasked keys of each ranking.

    Exact when every codebook has at most `depth - top_k` masked keys among the ranking.

    Args:
      ranked: int `[n, codebooks, depth]` from :func:`ranked_codes`.
      ranked_valid: bool, same shape.
      search_mask: bool `[codebooks, keys]`.
      top_k: keys retrieved per codebook.

    Returns:
      indices int32 `[n, codebooks, top_k]` (-1 where invalid) and valid bool.
    """
    cb = jnp.arange(search_mask.shape[0])[None, :, None]
    active = ranked_valid & ~search_mask[cb, jnp.where(ranked_valid, ranked, 0)]
    # A stable sort on "inactive" moves active entries to the front, keeping distance order.
    order = jnp.argsort(~active, axis=-1, stable=True)[..., :top_k]
    idx = jnp.take_along_axis(ranked, order, axis=-1)
    valid = jnp.take_along_axis(active, order, axis=-1)
    return jnp.where(valid, idx, -1), valid


def _predict(model, variables, ranked, ranked_valid, mode):
    return _ranked_logits(model, variables, ranked, ranked_valid, mode).argmax(-1)


def _ranked_logits(model, variables, ranked, ranked_valid, mode):
    if mode == "search":
        idx, valid = codes_under_mask(
            ranked, ranked_valid, variables["mask"]["search"], model.config.top_k
        )
    else:
        idx, valid = ranked[..., : model.config.top_k], ranked_valid[..., : model.config.top_k]
    return model.apply(variables, idx, valid, method=DKVB.decode_codes)


def _outputs(logits, labels):
    """(predicted class, cross-entropy) of each row: the accuracy and the MIA feature."""
    return logits.argmax(-1), optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def _split_accuracy(pred, labels, forget):
    """Accuracy on the rows whose class is in `forget` (bool `[classes]`) and on the others."""
    correct = (pred == labels).astype(jnp.float32)
    in_forget = forget[labels]
    f = jnp.sum(correct * in_forget) / jnp.maximum(in_forget.sum(), 1)
    r = jnp.sum(correct * ~in_forget) / jnp.maximum((~in_forget).sum(), 1)
    return f, r


@functools.partial(jax.jit, static_argnames=("model", "mode"))
def uva_metrics(model, variables, usage, forget, n, ranked, ranked_valid, labels, mode="search"):
    """Forget / retain accuracy after UvA with `n` keys per class; pure and `vmap`-able.

    Args:
      model: the DKVB module (static).
      variables: DKVB variables.
      usage: per-class histogram `[classes, codebooks, keys]`.
      forget: bool `[classes]`, classes to forget.
      n: keys per codebook and class (may be traced: `vmap` over it).
      ranked, ranked_valid: evaluation codes from :func:`ranked_codes`, depth >= n*|forget|+top_k.
      labels: int `[m]` evaluation labels.
      mode: mask mode.

    Returns:
      (forget accuracy, retain accuracy), float32 scalars.
    """
    sel = sel_lib.mask_top_n_per_class(usage, forget, n)
    v = masking.apply_selection(variables, sel, mode)
    return _split_accuracy(_predict(model, v, ranked, ranked_valid, mode), labels, forget)


@functools.partial(jax.jit, static_argnames=("model", "mode"))
def uve_metrics(
    model, variables, forget_codes, forget, n_e, ranked, ranked_valid, labels, mode="search"
):
    """Forget / retain accuracy after UvE on the first `n_e` rows of `forget_codes`.

    Args:
      forget_codes: (indices, valid) `[m, codebooks, top_k]` of the forget examples.
      n_e: examples used (may be traced).
      Others as in :func:`uva_metrics`; depth >= n_e * top_k + top_k.
    """
    idx, valid = forget_codes
    w = jnp.arange(idx.shape[0]) < n_e
    sel = sel_lib.codes_selection(idx, valid, model.config.num_keys, weights=w)
    v = masking.apply_selection(variables, sel, mode)
    return _split_accuracy(_predict(model, v, ranked, ranked_valid, mode), labels, forget)


# Bytes per evaluation row, variant and ranked key of a vmapped evaluation (ranked index, its
# validity, the stable sort of the masked flags and its order), for sizing row batches.
_ROW_BYTES_PER_RANK = 16


# Deeper rankings cost more than searching each variant's masked model directly: a top-`depth`
# search over every key, against one blocked top-1 search per variant (measured on the paper's
# 256 x 4096, 10 variants at depth 257 on the 10,000 CIFAR-10 test rows: 296 s ranked, 81 s
# direct).
_RANKED_MAX_DEPTH = 32


@functools.partial(jax.jit, static_argnames=("model", "depth", "mode", "batch_size"))
def _variant_outputs(model, variables, selections, x, y, depth, mode, batch_size):
    def ranked_rows(batch):
        xb, yb = batch
        res = _rank(model, variables, xb, depth)

        def outputs(selection):
            v = masking.apply_selection(variables, selection, mode)
            return _outputs(_ranked_logits(model, v, res.indices, res.valid, mode), yb)

        return jax.vmap(outputs, out_axes=1)(selections)

    def direct_rows(batch):
        xb, yb = batch

        def outputs(selection):
            v = masking.apply_selection(variables, selection, mode)
            return _outputs(model.apply(v, xb), yb)

        # One variant after another: a vmapped blocked search batches its stage-1 minima and
        # stage-2 gathers over the variants, which measured 2.4x slower than running them in
        # turn (10 masks, 4000 rows, 128 x 512 keys on 2 CPU cores: 6.1 s vmapped, 2.6 s mapped).
        pred, loss = jax.lax.map(outputs, selections)
        return pred.T, loss.T

    rows = ranked_rows if depth <= _RANKED_MAX_DEPTH else direct_rows
    return _batching.batched_apply(rows, (x, y), batch_size)


def variant_outputs(
    model: DKVB,
    variables: dict,
    selections: jax.Array,
    x,
    y,
    depth: int,
    *,
    mode: str = "search",
    memory_mb: float = 512.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Predictions and losses of many unlearned variants of one model, in one jitted pass.

    With a shallow ranking (`depth` <= 32) every row's `depth` nearest keys are ranked once and
    each variant's prediction is a gather; deeper rankings cost more than a direct masked
    search, so each variant is then searched directly, one after another. Either runs inside
    one jitted map over row batches sized from `memory_mb`, so memory is bounded whatever the
    number of rows.

    Args:
      selections: bool `[variants, codebooks, keys]`, the pairs each variant masks.
      x: evaluation embeddings `[m, embed_dim]`; y: their int labels `[m]`.
      depth: keys each variant masks at most among a row's nearest, plus `top_k` (the ranking
        is exact when no variant masks more than `depth - top_k` of them in a codebook).
      mode: mask mode.
      memory_mb: budget for one row batch's intermediates.

    Returns:
      predicted classes int `[m, variants]` and cross-entropy float32 `[m, variants]`.
    """
    cfg = model.config
    _validation.check_labels(y, cfg.num_classes, n=np.shape(x)[0])
    depth = int(min(max(depth, cfg.top_k), cfg.num_keys))
    if depth <= _RANKED_MAX_DEPTH:  # every variant's gathers are live at once
        per_row = selections.shape[0] * cfg.num_codebooks * depth * _ROW_BYTES_PER_RANK
    else:  # one variant's search at a time
        per_row = cfg.num_codebooks * (cfg.key_dim + 2 * cfg.top_k) * _ROW_BYTES_PER_RANK
    batch_size = max(1, int(memory_mb * 2**20) // per_row)
    pred, loss = _variant_outputs(
        model,
        variables,
        jnp.asarray(selections),
        jnp.asarray(x),
        jnp.asarray(y, jnp.int32),
        depth,
        mode,
        batch_size,
    )
    return np.asarray(pred), np.asarray(loss)


def variant_predictions(
    model: DKVB,
    variables: dict,
    selections: jax.Array,
    x,
    depth: int,
    *,
    mode: str = "search",
    memory_mb: float = 512.0,
) -> np.ndarray:
    """Predictions int `[m, variants]` of :func:`variant_outputs` (same arguments, no labels)."""
    labels = np.zeros((np.shape(x)[0],), np.int32)
    return variant_outputs(
        model, variables, selections, x, labels, depth, mode=mode, memory_mb=memory_mb
    )[0]


@functools.partial(jax.jit, static_argnames=("model", "batch_size"))
def _params_variant_outputs(model, variables, params, x, y, batch_size):
    def rows(batch):
        xb, yb = batch
        idx, valid = model.apply(variables, xb, method=DKVB.codes)

        def outputs(p):
            logits = model.apply({**variables, "params": p}, idx, valid, method=DKVB.decode_codes)
            return _outputs(logits, yb)

        return jax.vmap(outputs, out_axes=1)(params)

    return _batching.batched_apply(rows, (x, y), batch_size)


def params_variant_outputs(
    model: DKVB, variables: dict, params: dict, x, y, *, memory_mb: float = 512.0
) -> tuple[np.ndarray, np.ndarray]:
    """Predictions and losses of variants that differ only in ``params`` (e.g. refitted values).

    The keys and masks are shared, so each row's codes are looked up once and every variant
    only decodes them: a retrain oracle per class costs one search, not one per class.

    Args:
      variables: the shared variables (their ``params`` are ignored).
      params: the ``params`` collection with a leading `[variants]` axis on every leaf.
      x: evaluation embeddings `[m, embed_dim]`; y: their int labels `[m]`.
      memory_mb: budget for one row batch's intermediates.

    Returns:
      predicted classes int `[m, variants]` and cross-entropy float32 `[m, variants]`.
    """
    cfg = model.config
    _checks.check_variables(cfg, variables)
    _validation.check_embeddings(x, cfg.embed_dim, allow_tokens=False)
    _validation.check_labels(y, cfg.num_classes, n=np.shape(x)[0])
    variants = jax.tree.leaves(params)[0].shape[0]
    # Per row: each variant's gathered values, and the shared codes.
    per_row = cfg.num_codebooks * (variants * cfg.num_classes * 4 + cfg.top_k * 8)
    batch_size = max(1, int(memory_mb * 2**20) // per_row)
    pred, loss = _params_variant_outputs(
        model, variables, params, jnp.asarray(x), jnp.asarray(y, jnp.int32), batch_size
    )
    return np.asarray(pred), np.asarray(loss)


def split_accuracies(pred: np.ndarray, labels, forget) -> tuple[np.ndarray, np.ndarray]:
    """Forget / retain accuracy of each column of `pred` `[m, variants]`.

    Args:
      labels: int `[m]`.
      forget: bool `[m, variants]` or `[m, 1]`, True for the rows of each variant's forget set.
    """
    correct = pred == np.asarray(labels)[:, None]
    forget = np.broadcast_to(forget, correct.shape)
    f = (correct & forget).sum(0) / np.maximum(forget.sum(0), 1)
    r = (correct & ~forget).sum(0) / np.maximum((~forget).sum(0), 1)
    return f.astype(np.float32), r.astype(np.float32)


def every_class_metrics(
    model: DKVB,
    variables: dict,
    data,
    n: int,
    x,
    labels,
    *,
    method: str | UnlearningMethod = UVA,
    pool_labels=None,
    mode: str = "search",
    memory_mb: float = 512.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Forgets each class on its own with a registered masking method (size `n`) and evaluates
    all of them in one `vmap`.

    Each class's request goes through the method's statistics step; the selections are one
    `vmap` of its `select` over the stacked forget sets (:func:`~dkvb_jax.unlearning.spec.
    select_over_sets`), evaluated from one ranking of `x` as deep as the method needs.

    Args:
      data: what the method reads (:attr:`UnlearningMethod.reads`), as a
        :class:`~dkvb_jax.unlearning.ForgetData` (its `classes` and `rows` are set per class),
        or a per-class histogram `[classes, codebooks, keys]` for ``ForgetData(usage=...)``.
      n: the method's size (keys per codebook for UvA).
      x: evaluation embeddings `[m, embed_dim]`; labels: int `[m]`.
      method: a registered masking method's name or spec (default UvA from the histogram).
      pool_labels: int `[p]`, labels of the examples in `data.codes` / `data.forget_x` (for a
        method reading examples: class `c`'s forget set is its rows, in order).
      mode: mask mode.
      memory_mb: budget for one row batch (see :func:`variant_predictions`).

    Returns:
      forget accuracy `[classes]` (on that class's rows) and retain accuracy `[classes]` (on the
      other rows), each entry for the model that forgot that class alone.
    """
    method = get_method(method) if isinstance(method, str) else method
    if method.select is None:
        raise InputError(
            f"every_class_metrics evaluates masking methods ({', '.join(masking_methods())}); "
            f"{method.name} edits values."
        )
    cfg = model.config
    _checks.check_variables(cfg, variables)
    masking.check_mode(mode)
    _validation.check_embeddings(x, cfg.embed_dim, allow_tokens=False)
    _validation.check_labels(labels, cfg.num_classes, n=x.shape[0])
    data = data if isinstance(data, ForgetData) else ForgetData(usage=data)
    if pool_labels is not None:
        pool_labels = np.asarray(pool_labels)
    per_class = []
    for c in range(cfg.num_classes):
        rows = None if pool_labels is None else np.flatnonzero(pool_labels == c)
        request = dataclasses.replace(data, classes=(c,), rows=rows)
        per_class.append(method.statistics(model, variables, request))
    stacked = stack_sets(method, per_class)
    n = check_size(method, model, stacked, n)
    selections = select_over_sets(method, stacked, n)  # class c's variant forgets c alone
    depth = method.lookup_depth(cfg, stacked, n)
    pred = variant_predictions(
        model, variables, selections, x, depth, mode=mode, memory_mb=memory_mb
    )
    labels = np.asarray(labels)
    return split_accuracies(pred, labels, labels[:, None] == np.arange(cfg.num_classes)[None])


@functools.partial(jax.jit, static_argnames=("mode",))
def unlearn_every_class(variables: dict, usage: jax.Array, n: int, mode: str = "search") -> dict:
    """The UvA-unlearned variables of every class at once: each leaf gets a leading class axis.

    Entry `c` equals forgetting class `c` alone with the same `n` and `mode`.
    """
    selections = sel_lib.mask_top_n(jnp.asarray(usage), n)  # [classes, codebooks, keys]
    return jax.vmap(lambda s: masking.apply_selection(variables, s, mode))(selections)
