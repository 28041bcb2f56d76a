"""Certified exact unlearning on full CIFAR-10: the default recipe's accuracy and forgetting.

The certified recipe (``ExperimentConfig.recipe("certified")``) holds out a stratified 10% of
the training split to fit the LDA projection (with its labels) and the keys (without); the
values are derived in closed form from per-pair label counts of the other 90%, D. No frozen
part sees a row of D, so removing any of them is exact by subtraction and certified from the
model's recorded provenance. For each encoder this script measures, on the same cached
embeddings:

- test accuracy against a linear probe on all 50,000 training rows (D and the held-out rows);
- every class forgotten alone, and three classes at once: forget-test and retain-test accuracy
  before and after, retain-train accuracy, MIA on the forgotten training rows (n per side and
  the spread over folds), each compared with the retrain oracle (closed-form values refitted
  on the retained rows), bit for bit;
- a random 1% and 10% of D forgotten: MIA and test accuracy against the oracle's, time per
  request, and the masking API's ``forget_examples`` on the same rows beside it (pairs masked,
  retain damage) as the weaker tool it is;
- the full retrain oracle once (every part refitted on D minus the 1% request), compared leaf
  by leaf with the unlearned variables;
- 100 sequential requests against one request of their union, bit for bit, with the time of
  each request;
- the same removal on a model fitted the old way (LDA and keys on D): values exact, not
  certified, naming the parts.

One JSON per encoder (``certified_<encoder>.json``: ``encoder``, ``certified``,
``test_accuracy``, ``probe_accuracy`` as fractions, and the rest) and ``results.md`` go to
``--out``; the table is printed. The README's numbers come from this command:

    python experiments/certified_unlearning.py --data-dir ../shared/data/cifar10 --cache-dir $DKVB_CACHE_DIR --out experiments/results/certified

``--synthetic`` runs the same protocol on clustered data in seconds (the smoke test).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from dkvb_jax import exact
from dkvb_jax.encoders import register_encoder
from dkvb_jax.evaluation import mia_attack
from dkvb_jax.evaluation.probe import linear_probe
from dkvb_jax.experiment import ExperimentConfig, fit_dkvb
from dkvb_jax.experiment.config import parse_overrides
from dkvb_jax.experiment.recipe import fit_from_config, key_data_rows
from dkvb_jax.model import DKVB
from dkvb_jax.provenance import Rows
from dkvb_jax.training import compute_codes
from dkvb_jax.unlearning import forget_examples
from dkvb_jax.unlearning.audit import variables_hash

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))  # the sibling report module
from certified_report import to_markdown  # noqa: E402

ENCODERS = ("mobilenet_v1", "cifar_resnet20")
DATASET = "cifar10/train"
# --synthetic: clustered features with no encoder, registered as one trained on no data.
SYNTHETIC = ("synthetic_features", "synthetic/train")
FRACTIONS = (0.01, 0.1)
SEQUENTIAL_ROWS = 10  # rows per sequential request


# ----------------------------------------------------------------------------- evaluation


@functools.partial(jax.jit, static_argnames=("model",))
def _logits(model: DKVB, variables: dict, idx: jax.Array, valid: jax.Array) -> jax.Array:
    return model.apply(variables, idx, valid, method=DKVB.decode_codes)


@dataclasses.dataclass(frozen=True)
class Coded:
    """A split as frozen codes: exact removal never changes keys, so its codes stay valid."""

    idx: np.ndarray
    valid: np.ndarray
    y: np.ndarray

    def take(self, rows: np.ndarray) -> Coded:
        return Coded(self.idx[rows], self.valid[rows], self.y[rows])


def _eval(model: DKVB, variables: dict, split: Coded, chunk: int = 4096):
    """Predictions and per-example cross-entropy `[n]` of a split."""
    preds, losses = [], []
    for a in range(0, split.y.size, chunk):
        logits = _logits(
            model,
            variables,
            jnp.asarray(split.idx[a : a + chunk]),
            jnp.asarray(split.valid[a : a + chunk]),
        )
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
        y = jnp.asarray(split.y[a : a + chunk])
        preds.append(np.asarray(logits.argmax(-1)))
        losses.append(np.asarray(-jnp.take_along_axis(logp, y[:, None], -1)[:, 0]))
    return np.concatenate(preds), np.concatenate(losses)


def _acc(model, variables, split: Coded) -> float | None:
    if split.y.size == 0:
        return None
    return float((_eval(model, variables, split)[0] == split.y).mean())


def _mia(model, variables, members: Coded, nonmembers: Coded, seed: int) -> dict:
    result = mia_attack(
        _eval(model, variables, members)[1], _eval(model, variables, nonmembers)[1], seed=seed
    )
    return result.to_dict()


def _warm(fn, *args, **kwargs):
    """`fn`'s second result: each request shape compiles once, and the record times the call."""
    fn(*args, **kwargs)
    return fn(*args, **kwargs)


def _same(a: dict, b: dict) -> bool:
    return variables_hash(a) == variables_hash(b)


# ----------------------------------------------------------------------------- protocol


@dataclasses.dataclass
class Setup:
    """The fitted certified model and everything its requests are measured on."""

    cfg: ExperimentConfig
    model: DKVB
    variables: dict
    stats: exact.LabelStats
    train: Coded  # the rows of D, in the statistics' order
    test: Coded

    @property
    def estimator(self) -> exact.EstimatorConfig:
        return self.cfg.value_config()

    def oracle(self, keep: np.ndarray) -> dict:
        """Closed-form values refitted on the retained rows (same frozen parts)."""
        codes = np.where(self.train.valid[keep], self.train.idx[keep], -1)
        ids = np.asarray(self.stats.ids)[keep]
        return exact.fit_exact(
            self.model, self.variables, codes, self.train.y[keep], ids, estimator=self.estimator
        )[0]


def _request(s: Setup, after: dict, rec, forget_rows: np.ndarray, nonmembers: Coded, seed: int):
    """What one removal did, against the oracle on the same retained rows."""
    keep = np.ones(s.train.y.size, bool)
    keep[forget_rows] = False
    oracle = s.oracle(keep)
    forgotten = s.train.take(forget_rows)
    retained = s.train.take(np.flatnonzero(keep))
    return {
        "certificate": rec.certificate,
        "examples": int(forget_rows.size),
        "seconds": rec.params["update_seconds"],
        "bit_identical_to_oracle": _same(after, oracle),
        "test_acc": _accs(s, s.test, after=after, oracle=oracle),
        "forgotten_train_acc": _accs(s, forgotten, after=after),
        "retain_train_acc": _accs(s, retained, after=after),
        "mia": {
            name: _mia(s.model, v, forgotten, nonmembers, seed)
            for name, v in {"before": s.variables, "after": after, "oracle": oracle}.items()
        },
    }


def _accs(s: Setup, split: Coded, **states: dict) -> dict:
    """Accuracy on `split` of the model before the request and of each named state."""
    return {name: _acc(s.model, v, split) for name, v in {"before": s.variables, **states}.items()}


def forget_classes(s: Setup, classes: tuple[int, ...], seed: int) -> dict:
    after, _, rec = _warm(
        exact.remove_classes, s.variables, s.stats, classes, estimator=s.estimator
    )
    rows = np.flatnonzero(np.isin(s.train.y, classes))
    test_forget = s.test.take(np.flatnonzero(np.isin(s.test.y, classes)))
    test_retain = s.test.take(np.flatnonzero(~np.isin(s.test.y, classes)))
    out = _request(s, after, rec, rows, test_forget, seed)
    out.update(
        classes=list(classes),
        forget_test_acc=_accs(s, test_forget, after=after),
        retain_test_acc=_accs(s, test_retain, after=after),
    )
    return out


def forget_fraction(s: Setup, x_d: np.ndarray, fraction: float, rng, seed: int) -> dict:
    n = max(1, round(fraction * s.train.y.size))
    rows = np.sort(rng.choice(s.train.y.size, n, replace=False))
    ids = np.asarray(s.stats.ids)[rows]
    after, _, rec = _warm(exact.remove_examples, s.variables, s.stats, ids, estimator=s.estimator)
    nonmembers = s.test.take(rng.choice(s.test.y.size, min(n, s.test.y.size), replace=False))
    out = _request(s, after, rec, rows, nonmembers, seed)
    out["fraction"] = fraction
    # The masking API on the same rows, for comparison: it masks every pair they retrieve.
    masked, mrec = forget_examples(s.model, s.variables, rows, x=x_d)
    keep = np.ones(s.train.y.size, bool)
    keep[rows] = False
    total = int(np.prod(s.variables["mask"]["search"].shape))
    test_x_masked = _masked_acc(s, masked, x_d[keep], s.train.y[keep])
    out["masking"] = {
        "pairs_masked": int(sum(mrec.pairs_masked)),
        "pairs_total": total,
        "retain_train_acc_after": test_x_masked,
        "certificate": mrec.certificate,
    }
    return out


def _masked_acc(s: Setup, variables: dict, x: np.ndarray, y: np.ndarray) -> float:
    """Accuracy of a masked model: masks change the lookup, so the codes are recomputed."""
    idx, valid = compute_codes(s.model, variables, x)
    return _acc(s.model, variables, Coded(np.asarray(idx), np.asarray(valid), y))


def sequential(s: Setup, rng, requests: int, progress: bool) -> dict:
    per = SEQUENTIAL_ROWS
    rows = rng.choice(s.train.y.size, requests * per, replace=False).reshape(requests, per)
    ids = np.asarray(s.stats.ids)[rows]
    _warm(exact.remove_examples, s.variables, s.stats, ids[0], estimator=s.estimator)
    variables, stats, seconds, certified = s.variables, s.stats, [], True
    for batch in tqdm(ids, desc="sequential requests", leave=False, disable=not progress):
        variables, stats, rec = exact.remove_examples(
            variables, stats, batch, estimator=s.estimator
        )
        seconds.append(rec.params["update_seconds"])
        certified &= rec.certified
    union, ustats, urec = _warm(
        exact.remove_examples, s.variables, s.stats, ids.reshape(-1), estimator=s.estimator
    )
    tenth = max(1, requests // 10)
    return {
        "requests": requests,
        "rows_per_request": per,
        "bit_identical_to_union": _same(variables, union)
        and bool(np.array_equal(np.asarray(stats.counts), np.asarray(ustats.counts))),
        "all_certified": bool(certified and urec.certified),
        "seconds_first_10pct_mean": float(np.mean(seconds[:tenth])),
        "seconds_last_10pct_mean": float(np.mean(seconds[-tenth:])),
        "seconds_median": float(np.median(seconds)),
        "union_seconds": urec.params["update_seconds"],
    }


def full_oracle(s: Setup, fit, x, y, rows: np.ndarray, dataset: str) -> dict:
    """Every part refitted on D minus the request with the same procedure: leaf by leaf."""
    keep = np.ones(s.train.y.size, bool)
    keep[rows] = False
    d_rows, held, cfg = fit.rows[keep], fit.holdout, s.cfg
    key_rows = held[key_data_rows(held.size, cfg.key_max_examples, cfg.seed)]
    refit = fit_dkvb(
        cfg.dkvb_config(x.shape[1], s.stats.num_classes),
        x[d_rows],
        y[d_rows],
        key=jax.random.key(cfg.seed),
        key_data=x[key_rows],
        key_rows=Rows(dataset, key_rows),
        key_config=cfg.key_config(),
        value_config=cfg.value_config(),
        stats_config=cfg.stats_config(),
        preprocess=cfg.preprocess,
        preprocess_data=(x[held], y[held]),
        preprocess_rows=Rows(dataset, held, labels=True),
        dataset=dataset,
        ids=d_rows,
        progress=False,
    )
    after, _, _ = exact.remove_examples(s.variables, s.stats, fit.rows[rows], estimator=s.estimator)
    leaves = {
        name: bool(
            np.array_equal(np.asarray(after[col][name]), np.asarray(refit.variables[col][name]))
        )
        for col, name in (("frozen", "keys"), ("frozen", "projection"), ("params", "values"))
    }
    return {
        "examples": int(rows.size),
        "leaves_bit_identical": leaves,
        "all_bit_identical": _same(after, refit.variables),
    }


def old_way(cfg: ExperimentConfig, x, y, encoder: str, dataset: str, rng) -> dict:
    """The same removal on a model whose LDA and keys were fitted on D: not certified."""
    old = cfg.replace(holdout_fraction=0.0, key_max_examples=cfg.key_max_examples or 10_000)
    fitted = fit_from_config(
        old, x, y, num_classes=int(y.max()) + 1, dataset=dataset, encoder=encoder, progress=False
    ).fitted
    ids = np.asarray(fitted.stats.ids)
    forget = np.sort(rng.choice(ids, max(1, ids.size // 100), replace=False))
    _, _, rec = exact.remove_examples(
        fitted.variables, fitted.stats, forget, estimator=old.value_config()
    )
    return {"certificate": rec.certificate, "examples": int(forget.size)}


def run(
    encoder: str,
    x,
    y,
    xt,
    yt,
    cfg: ExperimentConfig,
    *,
    three: tuple[int, ...],
    dataset: str = DATASET,
    requests: int = 100,
    progress: bool = True,
) -> dict:
    start, cpu = time.perf_counter(), time.process_time()
    num_classes = int(max(y.max(), yt.max())) + 1
    steps = tqdm(total=7, desc=encoder, disable=not progress)
    steps.set_postfix_str("fit")
    fit = fit_from_config(
        cfg, x, y, num_classes=num_classes, dataset=dataset, encoder=encoder, progress=False
    )
    fitted = fit.fitted
    fit_seconds = time.perf_counter() - start
    model, variables, stats = fitted.model, fitted.variables, fitted.stats
    idx, valid = compute_codes(model, variables, xt)
    test = Coded(np.asarray(idx), np.asarray(valid), np.asarray(yt))
    codes = np.asarray(stats.codes)
    train = Coded(np.maximum(codes, 0), codes >= 0, np.asarray(stats.labels))
    s = Setup(cfg, model, variables, stats, train, test)
    x_d = x[np.asarray(stats.ids)]
    steps.update()
    steps.set_postfix_str("probe")
    probe = linear_probe(x, y, xt, yt).test_accuracy
    test_accuracy = _acc(model, variables, test)
    steps.update()
    rng = np.random.default_rng(cfg.seed)
    steps.set_postfix_str("classes")
    classes = [forget_classes(s, (c,), cfg.seed) for c in range(num_classes)]
    classes.append(forget_classes(s, three, cfg.seed))
    steps.update()
    steps.set_postfix_str("fractions")
    fractions = [forget_fraction(s, x_d, f, rng, cfg.seed) for f in FRACTIONS]
    steps.update()
    steps.set_postfix_str("full oracle")
    one_pct = np.sort(rng.choice(train.y.size, max(1, train.y.size // 100), replace=False))
    oracle = full_oracle(s, fit, x, y, one_pct, dataset)
    steps.update()
    steps.set_postfix_str("sequential")
    seq = sequential(s, rng, requests, progress)
    steps.update()
    steps.set_postfix_str("old way")
    old = old_way(cfg, x, y, encoder, dataset, rng)
    steps.update()
    steps.close()
    requests = [*classes, *fractions]
    return {
        "encoder": encoder,
        "certified": all(r["certificate"]["certified"] for r in requests) and seq["all_certified"],
        "test_accuracy": test_accuracy,
        "probe_accuracy": probe,
        "gap_points": 100 * (probe - test_accuracy),
        "experiment": cfg.to_dict(),
        "rows": {
            "values": int(fit.rows.size),
            "held_out": int(fit.holdout.size),
            "test": int(yt.size),
        },
        "provenance": fitted.provenance.to_dict(),
        "fit_seconds": fit_seconds,
        "classes": classes,
        "fractions": fractions,
        "full_oracle": oracle,
        "sequential": seq,
        "old_way": old,
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu,
    }


# ----------------------------------------------------------------------------- main


def _load(encoder: str, data_dir, cache_dir):
    from dkvb_jax.embedding import embed_dataset

    splits = [
        embed_dataset(encoder, "cifar10", s, data_dir=data_dir, cache_dir=cache_dir)
        for s in ("train", "test")
    ]
    return tuple(a for c in splits for a in (c.embeddings.astype(np.float32), np.asarray(c.labels)))


def _synthetic():
    from dkvb_jax.testing import clustered_embeddings

    x, y = clustered_embeddings(0, 1500, num_classes=10, dim=32, noise=2.5)
    xt, yt = clustered_embeddings(1, 500, num_classes=10, dim=32, noise=2.5)
    return x, y, xt, yt


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--encoder", nargs="+", default=list(ENCODERS), help="encoders to measure")
    p.add_argument("--data-dir", default=None, help="CIFAR-10 folder (e.g. ../shared/data/cifar10)")
    p.add_argument("--cache-dir", default=None, help="embedding cache (default $DKVB_CACHE_DIR)")
    p.add_argument("--synthetic", action="store_true", help="clustered data, for a quick check")
    p.add_argument(
        "--three",
        type=int,
        nargs=3,
        default=[3, 5, 7],
        help="the three classes forgotten at once (default cat, dog, horse)",
    )
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="FIELD=VALUE",
        help="ExperimentConfig fields of the certified recipe to override, e.g. value_epochs=6 "
        "n_a_grid=[8,16] (VALUE as JSON, else a string; an unknown FIELD lists the valid ones)",
    )
    p.add_argument(
        "--sequential",
        type=int,
        default=100,
        help=f"sequential requests of {SEQUENTIAL_ROWS} rows each (default 100)",
    )
    p.add_argument("--out", required=True, help="folder for the JSON files and results.md")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> dict[str, dict]:
    args = parse_args(argv)
    cfg = ExperimentConfig.recipe("certified", **parse_overrides(args.set))
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    names = ["synthetic"] if args.synthetic else args.encoder
    for name in names:
        if args.synthetic:
            register_encoder(SYNTHETIC[0], lambda: None, trained_on=(), overwrite=True)
            data, (encoder, dataset) = _synthetic(), SYNTHETIC
        else:
            from dkvb_jax.embedding import DEFAULT_CACHE_DIR

            data = _load(name, args.data_dir, args.cache_dir or DEFAULT_CACHE_DIR)
            encoder, dataset = name, DATASET
        r = run(
            encoder,
            *data,
            cfg,
            three=tuple(args.three),
            dataset=dataset,
            requests=args.sequential,
            progress=not args.no_progress,
        )
        r["command"] = " ".join(["python", "experiments/certified_unlearning.py", *sys.argv[1:]])
        (out / f"certified_{name}.json").write_text(json.dumps(r, indent=2))
        results[name] = r
    md = to_markdown(results)
    (out / "results.md").write_text(md)
    print(md)
    return results


if __name__ == "__main__":
    main()
