"""Exact unlearning with closed-form DKVB values: accuracy, class and sample forgetting, MIA, cost.

Keys are fitted (EMA k-means, no labels) on a held-out slice of the training set that is never
part of the labelled data D, so they are independent of every forget set and each request is
certified exact. Values are then fitted in closed form from per-pair label counts, compared
with SGD-trained values on the same keys, and forgotten by subtracting counts.

Data: the embedding cache under ``--cache-dir`` (entries with ``manifest.json`` for the train and
test splits of each encoder in ``--encoder``, measured one after the other), or one ``.npz`` with
``x_train, y_train, x_test, y_test`` (``--npz``), or ``--synthetic`` clustered data for a quick
check. ``--out DIR`` writes ``exact_<name>.json`` per dataset and ``results.md``, the README's
table with one column per dataset; the README's numbers come from this one command:

    python experiments/exact_unlearning.py --cache-dir $DKVB_CACHE_DIR --num-codebooks 128 --num-keys 1024 --key-dim 14 --key-epochs 5 --sgd-epochs 10 --out experiments/results/exact
    python experiments/exact_unlearning.py --synthetic --out /tmp/exact
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import pathlib
import platform
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score

from dkvb_jax.config import DKVBConfig
from dkvb_jax.embedding import DEFAULT_CACHE_DIR
from dkvb_jax.exact import EstimatorConfig, fit_exact, forget_classes, remove_examples
from dkvb_jax.model import DKVB
from dkvb_jax.training import (
    KeyInitConfig,
    ValueTrainConfig,
    compute_codes,
    fit_keys,
    train_values,
)

ESTIMATORS = {
    "log_prob a=1": EstimatorConfig(),
    "log_prob a=0.1": EstimatorConfig(alpha=0.1),
    "log_prob a=0.01": EstimatorConfig(alpha=0.01),
    "centered a=0.1": EstimatorConfig(kind="centered_log_prob", alpha=0.1),
    "log_prob a=0.1 +prior": EstimatorConfig(alpha=0.1, prior_correction=True),
    "log_prob a=0.1 +info": EstimatorConfig(alpha=0.1, codebook_weighting="information"),
    "prob a=1": EstimatorConfig(kind="prob"),
}
DEFAULT_ENCODERS = ["mobilenet_v1", "cifar_resnet20"]
COLUMN_NAMES = {"mobilenet_v1": "MobileNetV1", "cifar_resnet20": "ResNet-20"}


# ----------------------------------------------------------------------------- data


def load_npz(path: pathlib.Path):
    if not path.is_file():
        raise FileNotFoundError(f"--npz {path} does not exist.")
    with np.load(path) as f:
        missing = {"x_train", "y_train", "x_test", "y_test"} - set(f.files)
        if missing:
            raise ValueError(f"--npz {path} lacks keys {sorted(missing)} (has {f.files}).")
        return tuple(f[k] for k in ("x_train", "y_train", "x_test", "y_test"))


def find_cache_entries(data_dir: pathlib.Path, encoder: str) -> dict[str, pathlib.Path]:
    """Train and test folders of the one cached encoder whose name contains ``encoder``."""
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"--cache-dir {data_dir} does not exist; pass --npz, or --synthetic for a quick check."
        )
    found: dict[tuple[str, str], pathlib.Path] = {}
    for manifest in sorted(data_dir.rglob("manifest.json")):
        key = json.loads(manifest.read_text()).get("key", {})
        if encoder in key.get("encoder", ""):
            found[(key.get("encoder", "?"), key.get("split", "?"))] = manifest.parent
    encoders = sorted({e for e, s in found if (e, "train") in found and (e, "test") in found})
    if not encoders:
        raise FileNotFoundError(
            f"No embedding-cache entries with both a train and a test split under {data_dir} "
            f"(encoder filter {encoder!r}; found {sorted(found)}). Build them with "
            "dkvb_jax.data.cache.cached_embeddings, or pass --npz / --synthetic."
        )
    if len(encoders) > 1:
        raise ValueError(f"Several encoders under {data_dir} match {encoder!r}: {encoders}.")
    return {"encoder": encoders[0], **{s: found[(encoders[0], s)] for s in ("train", "test")}}


def load_cache_entries(entries: dict) -> tuple:
    out = []
    for split in ("train", "test"):
        out += [np.load(entries[split] / "embeddings.npy"), np.load(entries[split] / "labels.npy")]
    print(f"loaded cache entries of encoder {entries['encoder']!r} from {entries['train'].parent}")
    return tuple(out)


def synthetic(seed: int, n_train=6000, n_test=2000, classes=10, dim=64):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes * 4, dim)) * 0.6

    def draw(n):
        c = rng.integers(0, classes * 4, n)
        return (centres[c] + rng.normal(size=(n, dim))).astype(np.float32), (c % classes)

    return (*draw(n_train), *draw(n_test))


@dataclasses.dataclass(frozen=True)
class Dataset:
    name: str  # results key and file name: exact_<name>.json
    source: str
    args: argparse.Namespace  # the run's arguments, with --encoder narrowed to this dataset
    load: Callable[[], tuple]  # -> x_train, y_train, x_test, y_test


def datasets(args: argparse.Namespace) -> list[Dataset]:
    """The datasets to measure; cache entries are all resolved before anything is loaded.

    Resolving first means a missing second encoder fails now, not after the first run.
    """
    if args.synthetic:
        return [Dataset("synthetic", "synthetic", args, lambda: synthetic(args.seed))]
    if args.npz is not None:
        if not args.npz.is_file():
            raise FileNotFoundError(f"--npz {args.npz} does not exist.")
        return [Dataset(args.npz.stem, str(args.npz), args, lambda: load_npz(args.npz))]
    out = []
    for encoder in args.encoder:
        entries = find_cache_entries(args.cache_dir, encoder)
        run_args = argparse.Namespace(**{**vars(args), "encoder": encoder})
        load = functools.partial(load_cache_entries, entries)
        out.append(Dataset(encoder, str(args.cache_dir), run_args, load))
    return out


# ----------------------------------------------------------------------------- metrics


def make_eval(model: DKVB):
    @jax.jit
    def logits_fn(values, variables, codes):
        v = {**variables, "params": {**variables["params"], "values": values}}
        return model.apply(v, codes, codes >= 0, method=DKVB.decode_codes)

    def losses_and_pred(variables, codes, labels):
        out_l, out_p = [], []
        for s in range(0, codes.shape[0], 4096):
            lg = logits_fn(variables["params"]["values"], variables, codes[s : s + 4096])
            out_l.append(optax.softmax_cross_entropy_with_integer_labels(lg, labels[s : s + 4096]))
            out_p.append(lg.argmax(-1))
        return np.concatenate(out_l), np.concatenate(out_p)

    return losses_and_pred


def accuracy(evaluate, variables, codes, labels, mask=None) -> float:
    if mask is not None:
        codes, labels = codes[mask], labels[mask]
    if labels.size == 0:
        return float("nan")
    return float(np.mean(evaluate(variables, codes, labels)[1] == labels))


def mia_accuracy(member_loss: np.ndarray, nonmember_loss: np.ndarray, seed: int) -> float:
    """SCRUB-style MIA: logistic regression on the per-example loss, balanced, 5-fold CV."""
    n = min(member_loss.size, nonmember_loss.size)
    rng = np.random.default_rng(seed)
    a = rng.choice(member_loss, n, replace=False)
    b = rng.choice(nonmember_loss, n, replace=False)
    x = np.log1p(np.clip(np.concatenate([a, b]), 0, None))[:, None]
    y = np.r_[np.ones(n), np.zeros(n)]
    cv = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    return float(cross_val_score(LogisticRegression(), x, y, cv=cv, scoring="accuracy").mean())


def same_bits(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def machine() -> dict:
    """Where the timings were taken; the load average says how shared the CPUs were."""
    return {"load": list(os.getloadavg()), "cpu_count": os.cpu_count(),
            "platform": platform.platform(), "jax": jax.__version__}  # fmt: skip


# ----------------------------------------------------------------------------- measurement


@dataclasses.dataclass(frozen=True)
class Setup:
    """Fitted keys and the codes of every split, shared by all measurements of one dataset."""

    model: DKVB
    variables: dict
    evaluate: Callable
    codes_d: np.ndarray
    y_d: np.ndarray
    ids_d: np.ndarray  # example ids = row numbers in the original train split
    codes_key: np.ndarray
    y_key: np.ndarray
    codes_te: np.ndarray
    y_te: np.ndarray

    def fit(self, keep, est):
        """Closed-form values from the D rows in ``keep`` (the retrain oracle when a subset)."""
        return fit_exact(self.model, self.variables, self.codes_d[keep], self.y_d[keep],
                         self.ids_d[keep], estimator=est, key_init_ids=[])  # fmt: skip


def compare_estimators(s: Setup, x_d: np.ndarray, args) -> tuple[list[dict], dict]:
    """Test accuracy of every closed-form estimator and of SGD values on the same keys."""
    rows = []
    for name, est in ESTIMATORS.items():
        t = time.perf_counter()
        v_cf, _ = fit_exact(s.model, s.variables, s.codes_d, s.y_d, s.ids_d, estimator=est,
                            key_init_ids=[])  # fmt: skip
        jax.block_until_ready(v_cf)
        dt = time.perf_counter() - t
        rows.append({
            "values": name, "fit_seconds": dt,
            "key_split_acc": accuracy(s.evaluate, v_cf, s.codes_key, s.y_key),
            "train_acc": accuracy(s.evaluate, v_cf, s.codes_d, s.y_d),
            "test_acc": accuracy(s.evaluate, v_cf, s.codes_te, s.y_te),
        })  # fmt: skip
        print(f"  {name:24s} test {rows[-1]['test_acc']:.4f}  ({dt:.2f}s)")
    t = time.perf_counter()
    v_sgd, _ = train_values(s.model, s.variables, x_d, s.y_d, key=jax.random.key(args.seed + 2),
                            config=ValueTrainConfig(epochs=args.sgd_epochs), progress=False)  # fmt: skip
    dt = time.perf_counter() - t
    rows.append({"values": f"SGD ({args.sgd_epochs} ep)", "fit_seconds": dt,
                 "key_split_acc": accuracy(s.evaluate, v_sgd, s.codes_key, s.y_key),
                 "train_acc": accuracy(s.evaluate, v_sgd, s.codes_d, s.y_d),
                 "test_acc": accuracy(s.evaluate, v_sgd, s.codes_te, s.y_te)})  # fmt: skip
    print(f"  {rows[-1]['values']:24s} test {rows[-1]['test_acc']:.4f}  ({dt:.2f}s)")
    return rows, v_sgd


def forget_best_class(s: Setup, est, v_full, s_full, rng) -> dict:
    """Forget the best-learned test class, as in the paper, and compare with the oracle."""
    ev, codes_te, y_te = s.evaluate, s.codes_te, s.y_te
    _, pred_te = ev(v_full, codes_te, y_te)
    num_classes = s.model.config.num_classes
    per_class = [float(np.mean(pred_te[y_te == c] == c)) for c in range(num_classes)]
    fc = int(np.argmax(per_class))
    # Warm-up on a random set of the class's size, so the timing excludes compiling.
    remove_examples(v_full, s_full, rng.choice(s.ids_d, int(np.sum(s.y_d == fc)), replace=False),
                    estimator=est)  # fmt: skip
    t = time.perf_counter()
    v_fc, _, rec = forget_classes(v_full, s_full, fc, estimator=est)
    jax.block_until_ready(v_fc)
    dt = time.perf_counter() - t
    keep = s.y_d != fc
    v_or, _ = s.fit(keep, est)
    f_te, r_te = y_te == fc, y_te != fc
    return {
        "class": fc, "seconds": dt, "update_seconds": rec.params["update_seconds"],
                 "exact_record": rec.params["exact"],
        "bit_identical_to_oracle": same_bits(v_fc["params"]["values"], v_or["params"]["values"]),
        "before": {"forget_test": accuracy(ev, v_full, codes_te, y_te, f_te),
                   "retain_test": accuracy(ev, v_full, codes_te, y_te, r_te)},
        "after": {"forget_test": accuracy(ev, v_fc, codes_te, y_te, f_te),
                  "retain_test": accuracy(ev, v_fc, codes_te, y_te, r_te),
                  "forget_train": accuracy(ev, v_fc, s.codes_d, s.y_d, ~keep)},
        "oracle": {"forget_test": accuracy(ev, v_or, codes_te, y_te, f_te),
                   "retain_test": accuracy(ev, v_or, codes_te, y_te, r_te)},
    }  # fmt: skip


def forget_samples(s: Setup, est, v_full, s_full, v_sgd, rng, args) -> list[dict]:
    """Forget random fractions of D; accuracy, loss and MIA before, after and for the oracle."""
    ev, ids_d, y_d = s.evaluate, s.ids_d, s.y_d
    out = []
    for frac in args.forget_fractions:
        n_f = max(1, int(round(frac * ids_d.size)))
        rows_f = np.sort(rng.choice(ids_d.size, n_f, replace=False))
        fset = np.zeros(ids_d.size, bool)
        fset[rows_f] = True
        # Warm-up on another set of the same size: the timed request must not include compiling.
        remove_examples(v_full, s_full, rng.choice(ids_d, n_f, replace=False), estimator=est)
        t = time.perf_counter()
        v_un, _, rec = remove_examples(v_full, s_full, ids_d[rows_f], estimator=est)
        jax.block_until_ready(v_un)
        dt = time.perf_counter() - t
        v_or, _ = s.fit(~fset, est)
        entry = {"fraction": frac, "num_forgotten": n_f, "seconds": dt,
                 "update_seconds": rec.params["update_seconds"],
                 "exact_record": rec.params["exact"],
                 "bit_identical_to_oracle": same_bits(v_un["params"]["values"],
                                                      v_or["params"]["values"])}  # fmt: skip
        for tag, v in (("before", v_full), ("after", v_un), ("oracle", v_or)):
            loss_f, pred_f = ev(v, s.codes_d[fset], y_d[fset])
            loss_t, _ = ev(v, s.codes_te, s.y_te)
            entry[tag] = {
                "forget_acc": float(np.mean(pred_f == y_d[fset])),
                "test_acc": accuracy(ev, v, s.codes_te, s.y_te),
                "mia": mia_accuracy(loss_f, loss_t, args.seed),
                "forget_mean_loss": float(loss_f.mean()), "test_mean_loss": float(loss_t.mean()),
            }  # fmt: skip
        if frac == args.forget_fractions[0]:  # MIA reference: the SGD model on the same set
            loss_f, _ = ev(v_sgd, s.codes_d[fset], y_d[fset])
            entry["sgd_before_mia"] = mia_accuracy(loss_f, ev(v_sgd, s.codes_te, s.y_te)[0],
                                                   args.seed)  # fmt: skip
        out.append(entry)
        print("sample forgetting:", json.dumps(entry))
    return out


def sequential_requests(s: Setup, est, v_full, s_full, rng, requested: int) -> dict:
    """Many small requests one after the other must equal one request of their union."""
    n_seq = min(requested, s.ids_d.size // 2)
    chosen = rng.choice(s.ids_d, max(n_seq, int(0.01 * s.ids_d.size)), replace=False)
    v_seq, s_seq = v_full, s_full
    times = []
    for req in np.array_split(chosen, n_seq):
        t = time.perf_counter()
        v_seq, s_seq, _ = remove_examples(v_seq, s_seq, req, estimator=est)
        jax.block_until_ready(v_seq)
        times.append(time.perf_counter() - t)
    v_union, s_union, _ = remove_examples(v_full, s_full, chosen, estimator=est)
    return {
        "requests": n_seq, "examples": int(chosen.size),
        "median_seconds_per_request": float(np.median(times)),
        "total_seconds": float(np.sum(times)),
        "bit_identical_to_union": same_bits(v_seq["params"]["values"],
                                            v_union["params"]["values"])
        and same_bits(s_seq.counts, s_union.counts),
    }  # fmt: skip


def run_one(x_tr, y_tr, x_te, y_te, args, source: str) -> dict:
    """Every measurement on one dataset; the results dict that becomes exact_<name>.json."""
    y_tr, y_te = y_tr.astype(np.int32), y_te.astype(np.int32)
    num_classes = int(max(y_tr.max(), y_te.max())) + 1
    # One generator, drawn from in a fixed order (split, class, samples, sequential), so a
    # dataset's forget sets do not depend on which other datasets run with it.
    rng = np.random.default_rng(args.seed)
    perm = rng.permutation(x_tr.shape[0])
    if args.max_train:
        perm = perm[: args.max_train]
    n_key = int(round(args.key_fraction * perm.size))
    key_rows, d_rows = np.sort(perm[:n_key]), np.sort(perm[n_key:])
    # Standardise with key-split statistics only, so nothing about D enters the features.
    mu, sd = x_tr[key_rows].mean(0), x_tr[key_rows].std(0) + 1e-6
    std = lambda a: ((a - mu) / sd).astype(np.float32)
    x_key, x_d, y_d, x_te = std(x_tr[key_rows]), std(x_tr[d_rows]), y_tr[d_rows], std(x_te)
    print(f"data {source}: D={x_d.shape[0]} key-split={n_key} test={x_te.shape[0]} "
          f"dim={x_d.shape[1]} classes={num_classes}")  # fmt: skip

    # --- keys (no labels, disjoint from D) and codes
    cfg = DKVBConfig(embed_dim=x_d.shape[1], num_classes=num_classes,
                     num_codebooks=args.num_codebooks, num_keys=args.num_keys,
                     key_dim=args.key_dim, top_k=args.top_k)  # fmt: skip
    model = DKVB(cfg)
    variables = model.init(jax.random.key(args.seed), x_d[:2])
    t = time.perf_counter()
    variables, _ = fit_keys(model, variables, x_key, key=jax.random.key(args.seed + 1),
                            config=KeyInitConfig(epochs=args.key_epochs), progress=False)  # fmt: skip
    t_keys = time.perf_counter() - t
    t = time.perf_counter()

    def codes_of(x):  # int32 [n, codebooks, top_k], -1 where invalid
        idx, valid = compute_codes(model, variables, x)
        return np.asarray(jnp.where(valid, idx, -1))

    codes_d, codes_te, codes_key = codes_of(x_d), codes_of(x_te), codes_of(x_key)
    t_codes = time.perf_counter() - t
    s = Setup(model, variables, make_eval(model), codes_d, y_d, d_rows.astype(np.int32),
              codes_key, y_tr[key_rows], codes_te, y_te)  # fmt: skip
    results: dict = {"source": source, "config": cfg.to_dict(), "args": {
        k: str(v) for k, v in vars(args).items()}, "n_D": int(x_d.shape[0]),
        "n_key_split": n_key, "n_test": int(x_te.shape[0]),
        "seconds": {"fit_keys": t_keys, "codes": t_codes}}  # fmt: skip

    # --- closed form vs SGD on the same keys
    results["estimators"], v_sgd = compare_estimators(s, x_d, args)
    # The estimator is chosen on the key split (held out from D; its labels are used only here).
    best = max(results["estimators"][:-1], key=lambda r: r["key_split_acc"])["values"]
    est = ESTIMATORS[best]
    results["selected_estimator"] = {"name": best, **dataclasses.asdict(est)}
    print(f"selected estimator (key-split accuracy): {best}")
    v_full, s_full = s.fit(slice(None), est)

    results["class_forgetting"] = forget_best_class(s, est, v_full, s_full, rng)
    print("class forgetting:", json.dumps(results["class_forgetting"]))
    results["sample_forgetting"] = forget_samples(s, est, v_full, s_full, v_sgd, rng, args)
    results["sequential"] = sequential_requests(s, est, v_full, s_full, rng, args.sequential)
    print("sequential:", json.dumps(results["sequential"]))
    results["machine"] = machine()
    return results


# ----------------------------------------------------------------------------- report


def _change(entry: dict, field: str, fmt: str) -> str:
    """``before -> after (oracle)`` of one field of a forgetting entry."""
    before, after, oracle = (entry[t][field] for t in ("before", "after", "oracle"))
    return f"{before:{fmt}} -> {after:{fmt}} ({oracle:{fmt}})"


def _cells(r: dict, fractions: list[float]) -> list[str]:
    """One table column, top to bottom, from one results dict."""
    name = r["selected_estimator"]["name"]
    cform = next(e for e in r["estimators"] if e["values"] == name)
    sgd = r["estimators"][-1]
    cf, seq = r["class_forgetting"], r["sequential"]
    by_frac = {e["fraction"]: e for e in r["sample_forgetting"]}
    mia = [_change(by_frac[f], "mia", ".1%") if f in by_frac else "n/a" for f in fractions]
    secs = sorted(f"{e['seconds']:.2f}" for e in r["sample_forgetting"])
    identical = "bit-identical" if seq["bit_identical_to_union"] else "NOT bit-identical"
    return [
        f"{cform['test_acc']:.2%} ({name}, {cform['fit_seconds']:.1f} s)",
        f"{sgd['test_acc']:.2%} ({r['args']['sgd_epochs']} epochs, {sgd['fit_seconds']:.1f} s)",
        _change(cf, "forget_test", ".1%"),
        _change(cf, "retain_test", ".2%"),
        f"{cf['seconds']:.2f} s",
        *mia,
        "-".join(dict.fromkeys([secs[0], secs[-1]])) + " s",  # a range, or one value
        f"{identical} ({seq['median_seconds_per_request']:.2f} s median each)",
    ]


def to_markdown(results: dict[str, dict]) -> str:
    """The README's exact-unlearning table, one column per dataset."""
    fractions = [e["fraction"] for e in next(iter(results.values()))["sample_forgetting"]]
    n_seq = "/".join(dict.fromkeys(str(r["sequential"]["requests"]) for r in results.values()))
    labels = [
        "test accuracy, closed-form values (selected estimator)",
        "test accuracy, SGD-trained values on the same keys",
        "forget best class: forget-test before -> after (oracle)",
        "forget best class: retain-test before -> after (oracle)",
        "time per class request",
        *(f"forget random {f:.0%} of D: MIA before -> after (oracle)" for f in fractions),
        "time per sample-level request",
        f"{n_seq} sequential requests == one request of their union",
    ]
    columns = [_cells(r, fractions) for r in results.values()]
    names = [COLUMN_NAMES.get(n, n) for n in results]
    lines = ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in zip(labels, *columns, strict=True)]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--npz", type=pathlib.Path, help=".npz with x_train,y_train,x_test,y_test")
    p.add_argument("--cache-dir", type=pathlib.Path, default=DEFAULT_CACHE_DIR,
                   help="embedding-cache root searched for train/test entries")  # fmt: skip
    p.add_argument("--encoder", nargs="+", default=DEFAULT_ENCODERS,
                   help="substrings of the cached encoder names, one dataset each")  # fmt: skip
    p.add_argument("--synthetic", action="store_true", help="clustered synthetic data")
    p.add_argument("--max-train", type=int, default=0, help="subsample the train set (0 = all)")
    p.add_argument("--key-fraction", type=float, default=0.2,
                   help="fraction of train used, unlabelled, only to fit keys")  # fmt: skip
    p.add_argument("--num-codebooks", type=int, default=128)
    p.add_argument("--num-keys", type=int, default=1024)
    p.add_argument("--key-dim", type=int, default=14)
    p.add_argument("--top-k", type=int, default=1)
    p.add_argument("--key-epochs", type=int, default=10)
    p.add_argument("--sgd-epochs", type=int, default=10)
    p.add_argument("--forget-fractions", type=float, nargs="+", default=[0.01, 0.1])
    p.add_argument("--sequential", type=int, default=100, help="requests in the sequential check")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=pathlib.Path,
                   help="write exact_<name>.json per dataset and results.md here")  # fmt: skip
    p.add_argument("--json", type=pathlib.Path, help="write one dataset's results here")
    args = p.parse_args(argv)
    if len(set(args.encoder)) < len(args.encoder):
        p.error(f"--encoder names a dataset twice: {args.encoder}")
    if args.json and not (args.synthetic or args.npz) and len(args.encoder) > 1:
        p.error("--json holds one dataset; pass one --encoder, or --out for several")
    return args


def main(argv=None) -> dict[str, dict]:
    """Measure every dataset; returns {name: results dict}."""
    args = parse_args(argv)
    todo = datasets(args)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    for d in todo:
        results[d.name] = run_one(*d.load(), d.args, d.source)
        if args.out:  # written as each dataset finishes, so a later failure keeps it
            path = args.out / f"exact_{d.name}.json"
            path.write_text(json.dumps(results[d.name], indent=2))
            print(f"wrote {path}")
    if args.json:
        args.json.write_text(json.dumps(results[todo[0].name], indent=2))
        print(f"wrote {args.json}")
    table = to_markdown(results)
    if args.out:
        (args.out / "results.md").write_text(table)
        print(f"wrote {args.out / 'results.md'}")
    print(table)
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
