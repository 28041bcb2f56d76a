"""The pipeline behind ``imagenet_scale.py`` (see its docstring); `run(args)` returns the JSON."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import resource
import shutil
import time
from pathlib import Path

import _imagenet_every_class as every_class
import _imagenet_report as report
import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import RESULTS_DIR, write_json

from dkvb_jax import DKVB, DKVBConfig, parallel
from dkvb_jax._progress import note, progress_bar
from dkvb_jax.data import synthetic_imagenet as si
from dkvb_jax.exact import pair_counts
from dkvb_jax.training import KeyInitConfig, compute_codes, fit_keys
from dkvb_jax.unlearning import stored_eval
from dkvb_jax.unlearning.fast_eval import ranked_codes
from dkvb_jax.unlearning.selection import codes_selection

OUT_DIR = RESULTS_DIR / "imagenet_scale"


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Clock:
    """Wall and CPU seconds per stage, and the peak RSS after each."""

    def __init__(self):
        self.stages: dict[str, dict] = {}

    def __call__(self, name):
        clock = self

        class _Stage:
            def __enter__(self):
                self.t, self.c = time.perf_counter(), time.process_time()

            def __exit__(self, *exc):
                clock.stages[name] = dict(
                    wall_s=round(time.perf_counter() - self.t, 3),
                    cpu_s=round(time.process_time() - self.c, 3),
                    peak_rss_mib=round(_rss_mib(), 1),
                )
                note(f"[{name}] {clock.stages[name]}")

        return _Stage()


# --------------------------------------------------------------------------- linear probe


def _probe_init(dim: int, classes: int):
    params = {"w": jnp.zeros((dim, classes)), "b": jnp.zeros((classes,))}
    return params, _PROBE_TX.init(params)


_PROBE_TX = optax.adam(1e-3)
_PROBE_BATCH = 512


@jax.jit
def _probe_chunk(params, opt, x, y, mu, sd):
    """One Adam step per 512 rows of a chunk (the chunk's rows are already shuffled)."""
    n = (x.shape[0] // _PROBE_BATCH) * _PROBE_BATCH
    xb = ((x[:n] - mu) / sd).reshape(-1, _PROBE_BATCH, x.shape[1])
    yb = y[:n].reshape(-1, _PROBE_BATCH)

    def step(carry, batch):
        p, s = carry

        def loss(p):
            logits = batch[0] @ p["w"] + p["b"]
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()
            return ce + 1e-4 * jnp.sum(p["w"] ** 2)

        g = jax.grad(loss)(p)
        u, s = _PROBE_TX.update(g, s, p)
        return (optax.apply_updates(p, u), s), None

    return jax.lax.scan(step, (params, opt), (xb, yb))[0]


@jax.jit
def _probe_predict(params, x, mu, sd):
    """The probe's class of each row of `x` `[n, dim]`: int `[n]`."""
    return (((x - mu) / sd) @ params["w"] + params["b"]).argmax(-1)


@jax.jit
def _probe_correct(params, x, y, mu, sd):
    return jnp.sum(_probe_predict(params, x, mu, sd) == y)


# --------------------------------------------------------------------------- stages


def _fit_keys(args, model, variables, data):
    rows = []
    for x, _ in si.iter_chunks(data, "train"):
        rows.append(x)
        if sum(len(r) for r in rows) >= args.key_rows:
            break
    subset = np.concatenate(rows)[: args.key_rows]
    cfg = KeyInitConfig(epochs=args.key_epochs)
    variables, report = fit_keys(
        model, variables, subset, key=jax.random.key(args.seed + 1), config=cfg
    )
    return variables, dict(
        rows=len(subset),
        epochs=args.key_epochs,
        quantisation_error=report.quantisation_error[-1],
        dead_fraction=report.dead_fraction[-1],
    )


def _train_pass(args, model, variables, data):
    """Codes of every train row (int16) and the linear probe's epochs over the same chunks."""
    n, c = si.num_rows(data, "train"), model.config.num_codebooks
    codes = np.empty((n, c), np.int16 if model.config.num_keys <= 2**15 else np.int32)
    x0, _ = si.chunk(data, "train", 0)
    mu, sd = jnp.asarray(x0.mean(0)), jnp.asarray(x0.std(0) + 1e-6)
    params, opt = _probe_init(x0.shape[1], data.num_classes)
    start = 0
    bar = progress_bar(range(si.num_chunks(data, "train")), desc="train codes + probe epoch 1")
    for i in bar:
        x, y = si.chunk(data, "train", i)
        idx, _ = compute_codes(model, variables, x, batch_size=512)
        codes[start : start + len(x)] = np.asarray(idx[..., 0])
        start += len(x)
        params, opt = _probe_chunk(params, opt, x, y, mu, sd)
    for epoch in range(1, args.probe_epochs):
        for x, y in progress_bar(si.iter_chunks(data, "train"), desc=f"probe epoch {epoch + 1}"):
            params, opt = _probe_chunk(params, opt, x, y, mu, sd)
    return codes, (params, mu, sd)


def _val_pass(args, model, variables, data, probe):
    params, mu, sd = probe
    parts, correct = {"codes": [], "ranked": [], "queries": []}, 0
    queries_fn = jax.jit(lambda v, x: model.apply(v, x, method=DKVB.queries))
    for x, y in progress_bar(si.iter_chunks(data, "validation"), desc="validation codes"):
        ranked, _ = ranked_codes(model, variables, x, args.depth, batch_size=512)
        ranked = np.asarray(ranked).astype(np.int16 if model.config.num_keys <= 2**15 else np.int32)
        parts["ranked"].append(ranked)
        parts["codes"].append(ranked[..., 0])
        parts["queries"].append(np.asarray(queries_fn(variables, x)))
        correct += int(_probe_correct(params, x, y, mu, sd))
    out = {k: np.concatenate(v) for k, v in parts.items()}
    return out, correct / si.num_rows(data, "validation")


_uva_selection = jax.jit(stored_eval.uva_selection, static_argnums=2)


def _split(correct: np.ndarray, labels: np.ndarray, label: int) -> tuple[float, float]:
    forget = labels == label
    return float(correct[forget].mean()), float(correct[~forget].mean())


def _choose_n(args, store, labels, classes, mesh):
    """N_a as the paper picks it: the smallest of a doubling grid whose UvA drives the forget
    accuracy of each of the `--sample-classes` best-learned classes to `--target` or below;
    the grid, and the evaluation caps it grew (a start for the next stage)."""
    if args.n_keys is not None:
        return args.n_keys, {}, None
    correct = np.asarray(stored_eval.base_correct(store))
    per_class = np.array([correct[labels == c].mean() for c in classes])
    sample = [classes[i] for i in np.argsort(-per_class, kind="stable")[: args.sample_classes]]
    grid, n, caps = {}, 4, None
    while True:
        rows = []
        for c in sample:
            sel = _uva_selection(store, c, n)
            out, _, caps = stored_eval.evaluate(store, sel, caps, mesh)
            rows.append(_split(out, labels, c))
        rows = np.array(rows)
        grid[n] = dict(worst_forget=float(rows[:, 0].max()), retain_mean=float(rows[:, 1].mean()))
        note(f"N_a={n}: {grid[n]}")
        if grid[n]["worst_forget"] <= args.target or 2 * n > store.keys.shape[2]:
            return n, dict(sample_classes=[int(c) for c in sample], grid=grid), caps
        n *= 2


def _timing(args, store, classes) -> dict:
    sel = _uva_selection(store, classes[0], args.n_keys).block_until_ready()  # compile
    times = []
    for c in classes[: args.timing_classes]:
        t = time.perf_counter()
        sel = _uva_selection(store, c, args.n_keys)
        sel.block_until_ready()
        times.append(time.perf_counter() - t)
    return dict(
        forget_one_class_ms=float(np.median(times) * 1e3),
        forget_one_class_ms_p90=float(np.percentile(times, 90) * 1e3),
        timed_classes=len(times),
        masked_pairs=int(sel.sum()),
    )


def _uve(args, store, codes, train_labels, val_labels, classes, num_keys, mesh, caps):
    rows = []
    for c in classes[: args.sample_classes]:
        idx = np.flatnonzero(train_labels == c)[: args.n_examples]
        sel = codes_selection(
            jnp.asarray(codes[idx].astype(np.int32))[..., None],
            jnp.ones((len(idx), codes.shape[1], 1), bool),
            num_keys,
        )
        sel = sel.reshape(store.keys.shape[:3])
        correct, _, caps = stored_eval.evaluate(store, sel, caps, mesh)
        rows.append(_split(correct, val_labels, c))
    rows = np.array(rows)
    return dict(
        n_examples=args.n_examples,
        classes=len(rows),
        forget_mean=float(rows[:, 0].mean()),
        retain_mean=float(rows[:, 1].mean()),
    )


def _values(stats, mesh):
    return pair_counts.derive_fixed_point_values(stats, mesh=mesh)


def _exact_removal(args, store, stats, codes, labels, val_labels, mesh):
    """Removes a random 1% of train rows; checks the counts against a recount, bit for bit
    (`recount_s` is the recount and the comparison)."""
    rng = np.random.default_rng(args.seed + 7)
    n = len(labels)
    rm = np.sort(rng.choice(n, max(1, n // 100), replace=False))
    t = time.perf_counter()
    removed = stats.remove(codes[rm], labels[rm])
    remove_s = time.perf_counter() - t
    keep = np.ones(n, bool)
    keep[rm] = False
    t = time.perf_counter()
    # Recounted and compared class by class: no copy of the kept rows' codes, no second set of
    # statistics (together 1.9 GB at full size).
    same = removed.equals_recount(codes, labels, where=keep)
    recount_s = time.perf_counter() - t
    acc = float(
        np.asarray(stored_eval.correct_with_values(store, _values(removed, mesh), mesh)).mean()
    )
    return dict(
        rows_removed=int(len(rm)),
        remove_s=remove_s,
        recount_s=recount_s,
        counts_bit_identical_to_recount=bool(same),
        val_accuracy_after=acc,
    )


def _oracle(args, store, stats, codes, labels, val_labels, classes, mesh):
    """Retrain oracle: values refitted on the counts without the class (same frozen keys)."""
    rows = []
    for c in progress_bar(classes[: args.oracle_classes], desc="retrain oracle"):
        idx = labels == c
        without = stats.remove(codes[idx], labels[idx])
        correct = stored_eval.correct_with_values(store, _values(without, mesh), mesh)
        rows.append(_split(np.asarray(correct), val_labels, c))
    rows = np.array(rows)
    return dict(
        classes=[int(c) for c in classes[: args.oracle_classes]],
        forget=rows[:, 0].tolist(),
        retain=rows[:, 1].tolist(),
        forget_mean=float(rows[:, 0].mean()),
        retain_mean=float(rows[:, 1].mean()),
    )


_CACHED = ("train_codes", "val_codes", "val_ranked", "val_queries", "keys")


def _fingerprint(args, data, cfg) -> str:
    """What the cached stages depend on: their settings and every library and script source."""
    settings = dict(
        data=dataclasses.asdict(data),
        model=dataclasses.asdict(cfg),
        **{
            k: getattr(args, k) for k in ("key_rows", "key_epochs", "probe_epochs", "depth", "seed")
        },
    )
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    here = Path(__file__).resolve().parent
    for path in sorted([*(here.parents[1] / "dkvb_jax").rglob("*.py"), *here.glob("_*.py")]):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _encode(args, model, variables, data, clock, cache: Path | None, fingerprint: str):
    """Key init, train codes + probe and validation codes; with `--cache`, loaded from a cache
    of the same fingerprint when there is one, else computed and saved (written to a temporary
    folder first, so an interrupted save never leaves a partial cache)."""
    if cache is not None and (cache / "meta.json").is_file():
        try:
            meta = json.loads((cache / "meta.json").read_text())
            found = meta["fingerprint"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            meta, found = None, f"unreadable meta.json: {e!r}"
        if found == fingerprint:
            with clock("load cache"):
                arrays = {k: np.load(cache / f"{k}.npy") for k in _CACHED}
            return arrays, meta["probe_accuracy"], meta["key_init"], True
        note(f"cache {cache} is for other settings or code ({found}): recomputing")
    with clock("key init"):
        variables, keyinit = _fit_keys(args, model, variables, data)
    with clock("train codes + probe"):
        codes, probe = _train_pass(args, model, variables, data)
    with clock("validation codes"):
        val, probe_accuracy = _val_pass(args, model, variables, data, probe)
    arrays = dict(train_codes=codes, keys=np.asarray(variables["frozen"]["keys"]))
    arrays.update({f"val_{k}": v for k, v in val.items()})
    if cache is not None:
        part = cache.with_name(cache.name + ".partial")
        shutil.rmtree(part, ignore_errors=True)
        part.mkdir(parents=True)
        for k in _CACHED:
            np.save(part / f"{k}.npy", arrays[k])
        meta = dict(fingerprint=fingerprint, probe_accuracy=probe_accuracy, key_init=keyinit)
        (part / "meta.json").write_text(json.dumps(meta, indent=2, default=float))
        shutil.rmtree(cache, ignore_errors=True)
        part.rename(cache)
    return arrays, probe_accuracy, keyinit, False


def _device_memory(store) -> dict:
    """Bytes of each store array in all, and on the device holding the most of it."""
    out = {}
    for name in stored_eval.BLOCK_FIELDS:
        a = getattr(store, name)
        per = max(s.data.nbytes for s in a.addressable_shards)
        out[name] = dict(total_bytes=int(a.nbytes), per_device_bytes=int(per))
    return out


def run(args) -> dict:
    clock = _Clock()
    t_start = time.perf_counter()
    data = si.SyntheticImageNetConfig(
        num_classes=args.classes,
        num_superclasses=max(1, args.classes // 10),
        rows_per_class=args.rows_per_class,
        val_per_class=args.val_per_class,
        seed=args.seed,
    )
    # The frozen parts (projection, keys) and codes do not depend on the values, so the key
    # model carries a 1-class value table; the 1000-class values live in the evaluation store.
    cfg = DKVBConfig(
        embed_dim=data.dim,
        num_classes=1,
        num_codebooks=args.codebooks,
        num_keys=args.keys,
        key_dim=14,
    )
    model = DKVB(cfg)
    variables = model.init(jax.random.key(args.seed), jnp.zeros((1, data.dim)))
    mesh = parallel.data_codebook_mesh(1, args.devices) if args.devices > 1 else None
    train_labels = np.asarray(si.labels(data, "train"))
    val_labels = np.asarray(si.labels(data, "validation"))

    cache = Path(args.cache) if args.cache else None
    fingerprint = _fingerprint(args, data, cfg)
    arrays, probe_accuracy, keyinit, cache_hit = _encode(
        args, model, variables, data, clock, cache, fingerprint
    )
    codes = arrays.pop("train_codes")
    with clock("statistics"):
        stats = pair_counts.count_pairs(
            codes,
            train_labels,
            num_keys=cfg.num_keys,
            num_classes=data.num_classes,
            num_blocks=args.devices,
        )
    with clock("store"):
        store = stored_eval.build(
            stats,
            None,
            *(arrays.pop(k) for k in ("val_codes", "val_ranked", "val_queries", "keys")),
            val_labels,
            mesh=mesh,
        )
        del arrays  # the host copies go before the 4 GB value table is derived
    with clock("values"):
        store = stored_eval.with_values(store, _values(stats, mesh), mesh)
        val_accuracy = float(np.asarray(stored_eval.base_correct(store)).mean())
    classes = list(range(data.num_classes if args.eval_classes is None else args.eval_classes))
    with clock("choose N_a"):
        args.n_keys, n_choice, caps = _choose_n(args, store, val_labels, classes, mesh)
    with clock("forget one class"):
        timing = _timing(args, store, classes)
    forget, retain, sizes, caps, checked = every_class.stage(
        args, store, val_labels, classes, mesh, caps, clock
    )
    with clock("uve"):
        uve = _uve(args, store, codes, train_labels, val_labels, classes, cfg.num_keys, mesh, caps)
    memory = _device_memory(store)
    # Each later stage derives its own values: the current table goes first (one at a time),
    # and so do the store's device copy of the statistics (UvA's selections are done).
    stripped = store.replace(values=None, base=None, pairs=None, counts=None)
    del store
    with clock("exact removal"):
        exact = _exact_removal(args, stripped, stats, codes, train_labels, val_labels, mesh)
    with clock("retrain oracle"):
        oracle = _oracle(args, stripped, stats, codes, train_labels, val_labels, classes, mesh)
    name = ("quick" if args.quick else "full") + (
        f"_devices{args.devices}" if args.devices > 1 else ""
    )
    result = dict(
        train_rows=int(len(train_labels)),
        val_rows=int(len(val_labels)),
        classes=data.num_classes,
        peak_rss_mib=round(_rss_mib(), 1),
        forget_one_class_ms=timing["forget_one_class_ms"],
        every_class_eval_s=clock.stages["every class"]["wall_s"],
        every_class_eval_cpu_s=clock.stages["every class"]["cpu_s"],
        classes_evaluated=len(classes),
        val_accuracy=val_accuracy,
        probe_accuracy=probe_accuracy,
        total_s=round(time.perf_counter() - t_start, 1),
        devices=args.devices,
        model=report.model_record(cfg, data.num_classes),
        uva=report.uva_record(args, n_choice, forget, retain, timing, sizes, caps, checked),
        per_class=dict(forget=forget.round(4).tolist(), retain=retain.round(5).tolist()),
        uve=uve,
        exact_removal=exact,
        retrain_oracle=oracle,
        key_init=keyinit,
        cache=dict(dir=args.cache, fingerprint=fingerprint, hit=cache_hit) if args.cache else None,
        statistics=report.statistics_record(stats),
        codes=dict(dtype=str(codes.dtype), mib=round(codes.nbytes / 2**20, 1)),
        device_memory=memory,
        stages=clock.stages,
        depth=args.depth,
    )
    out = Path(args.out) if args.out else OUT_DIR / f"{name}.json"
    write_json("imagenet_scale", result, str(out))
    if not args.no_plot:
        report.plot(
            out.with_suffix(".png"),
            forget,
            retain,
            f"{data.num_classes} classes each forgotten alone (UvA N={args.n_keys}), "
            f"{len(train_labels):,} train rows, {len(val_labels):,} val rows",
        )
    print(report.summary(result))
    return result
