"""Exact unlearning with closed-form DKVB values: accuracy, class and sample forgetting, MIA, cost.

Keys are fitted (EMA k-means, no labels) on a held-out slice of the training set that is never
part of the labelled data D, so they are independent of every forget set and each request is
certified exact. Values are then fitted in closed form from per-pair label counts, compared
with SGD-trained values on the same keys, and forgotten by subtracting counts.

Data: a ``.npz`` with ``x_train, y_train, x_test, y_test`` (``--npz``), or the embedding cache
under ``--cache-dir`` (entries with ``manifest.json`` for the train and test splits of one
encoder, ``--encoder``), or ``--synthetic`` clustered data for a quick check.

    python experiments/exact_unlearning.py --synthetic --json /tmp/exact.json
    python experiments/exact_unlearning.py --npz cifar10_mobilenet.npz --json exact_mnv1.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import time

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


# ----------------------------------------------------------------------------- data


def load_npz(path: pathlib.Path):
    if not path.is_file():
        raise FileNotFoundError(f"--npz {path} does not exist.")
    with np.load(path) as f:
        missing = {"x_train", "y_train", "x_test", "y_test"} - set(f.files)
        if missing:
            raise ValueError(f"--npz {path} lacks keys {sorted(missing)} (has {f.files}).")
        return tuple(f[k] for k in ("x_train", "y_train", "x_test", "y_test"))


def load_cache(data_dir: pathlib.Path, encoder: str | None):
    """Train/test embeddings from the embedding cache (folders with a manifest.json)."""
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"--cache-dir {data_dir} does not exist; pass --npz, or --synthetic for a quick check."
        )
    found: dict[tuple[str, str], pathlib.Path] = {}
    for manifest in sorted(data_dir.rglob("manifest.json")):
        key = json.loads(manifest.read_text()).get("key", {})
        if encoder is None or encoder in key.get("encoder", ""):
            found[(key.get("encoder", "?"), key.get("split", "?"))] = manifest.parent
    encoders = sorted({e for e, s in found if (e, "train") in found and (e, "test") in found})
    if not encoders:
        raise FileNotFoundError(
            f"No embedding-cache entries with both a train and a test split under {data_dir} "
            f"(encoder filter {encoder!r}; found {sorted(found)}). Build them with "
            "dkvb_jax.data.cache.cached_embeddings, or pass --npz / --synthetic."
        )
    if len(encoders) > 1:
        raise ValueError(f"Several encoders cached under {data_dir}: {encoders}; pick --encoder.")
    out = []
    for split in ("train", "test"):
        d = found[(encoders[0], split)]
        out += [np.load(d / "embeddings.npy"), np.load(d / "labels.npy")]
    print(f"loaded cache entries of encoder {encoders[0]!r} from {data_dir}")
    return tuple(out)


def synthetic(seed: int, n_train=6000, n_test=2000, classes=10, dim=64):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes * 4, dim)) * 0.6

    def draw(n):
        c = rng.integers(0, classes * 4, n)
        return (centres[c] + rng.normal(size=(n, dim))).astype(np.float32), (c % classes)

    return (*draw(n_train), *draw(n_test))


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


# ----------------------------------------------------------------------------- main


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--npz", type=pathlib.Path, help=".npz with x_train,y_train,x_test,y_test")
    p.add_argument("--cache-dir", type=pathlib.Path, default=DEFAULT_CACHE_DIR,
                   help="embedding-cache root searched for train/test entries")  # fmt: skip
    p.add_argument("--encoder", help="substring of the cached encoder name to use")
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
    p.add_argument("--json", type=pathlib.Path, help="write the results here")
    args = p.parse_args(argv)

    # --- data
    if args.synthetic:
        x_tr, y_tr, x_te, y_te = synthetic(args.seed)
        source = "synthetic"
    elif args.npz is not None:
        x_tr, y_tr, x_te, y_te = load_npz(args.npz)
        source = str(args.npz)
    else:
        x_tr, y_tr, x_te, y_te = load_cache(args.cache_dir, args.encoder)
        source = str(args.cache_dir)
    y_tr, y_te = y_tr.astype(np.int32), y_te.astype(np.int32)
    num_classes = int(max(y_tr.max(), y_te.max())) + 1
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
    ids_d = d_rows.astype(np.int32)  # example ids = row numbers in the original train split
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
    evaluate = make_eval(model)
    results: dict = {"source": source, "config": cfg.to_dict(), "args": {
        k: str(v) for k, v in vars(args).items()}, "n_D": int(x_d.shape[0]),
        "n_key_split": n_key, "n_test": int(x_te.shape[0]),
        "seconds": {"fit_keys": t_keys, "codes": t_codes}}  # fmt: skip

    # --- closed form vs SGD on the same keys
    rows = []
    for name, est in ESTIMATORS.items():
        t = time.perf_counter()
        v_cf, _ = fit_exact(model, variables, codes_d, y_d, ids_d, estimator=est, key_init_ids=[])
        jax.block_until_ready(v_cf)
        dt = time.perf_counter() - t
        rows.append({
            "values": name, "fit_seconds": dt,
            "key_split_acc": accuracy(evaluate, v_cf, codes_key, y_tr[key_rows]),
            "train_acc": accuracy(evaluate, v_cf, codes_d, y_d),
            "test_acc": accuracy(evaluate, v_cf, codes_te, y_te),
        })  # fmt: skip
        print(f"  {name:24s} test {rows[-1]['test_acc']:.4f}  ({dt:.2f}s)")
    t = time.perf_counter()
    v_sgd, _ = train_values(model, variables, x_d, y_d, key=jax.random.key(args.seed + 2),
                            config=ValueTrainConfig(epochs=args.sgd_epochs), progress=False)  # fmt: skip
    dt = time.perf_counter() - t
    rows.append({"values": f"SGD ({args.sgd_epochs} ep)", "fit_seconds": dt,
                 "key_split_acc": accuracy(evaluate, v_sgd, codes_key, y_tr[key_rows]),
                 "train_acc": accuracy(evaluate, v_sgd, codes_d, y_d),
                 "test_acc": accuracy(evaluate, v_sgd, codes_te, y_te)})  # fmt: skip
    print(f"  {rows[-1]['values']:24s} test {rows[-1]['test_acc']:.4f}  ({dt:.2f}s)")
    results["estimators"] = rows
    # The estimator is chosen on the key split (held out from D; its labels are used only here).
    best = max(rows[:-1], key=lambda r: r["key_split_acc"])["values"]
    est = ESTIMATORS[best]
    results["selected_estimator"] = {"name": best, **dataclasses.asdict(est)}
    print(f"selected estimator (key-split accuracy): {best}")
    v_full, s_full = fit_exact(model, variables, codes_d, y_d, ids_d, estimator=est,
                               key_init_ids=[])  # fmt: skip

    # --- class forgetting: the best-learned class, as in the paper
    _, pred_te = evaluate(v_full, codes_te, y_te)
    per_class = [float(np.mean(pred_te[y_te == c] == c)) for c in range(num_classes)]
    fc = int(np.argmax(per_class))
    # Warm-up on a random set of the class's size, so the timing excludes compiling.
    remove_examples(v_full, s_full, rng.choice(ids_d, int(np.sum(y_d == fc)), replace=False),
                    estimator=est)  # fmt: skip
    t = time.perf_counter()
    v_fc, _, rec = forget_classes(v_full, s_full, fc, estimator=est)
    jax.block_until_ready(v_fc)
    dt = time.perf_counter() - t
    keep = y_d != fc
    v_or, _ = fit_exact(model, variables, codes_d[keep], y_d[keep], ids_d[keep], estimator=est,
                        key_init_ids=[])  # fmt: skip
    f_te, r_te = y_te == fc, y_te != fc
    results["class_forgetting"] = {
        "class": fc, "seconds": dt, "update_seconds": rec.params["update_seconds"],
                 "exact_record": rec.params["exact"],
        "bit_identical_to_oracle": same_bits(v_fc["params"]["values"], v_or["params"]["values"]),
        "before": {"forget_test": accuracy(evaluate, v_full, codes_te, y_te, f_te),
                   "retain_test": accuracy(evaluate, v_full, codes_te, y_te, r_te)},
        "after": {"forget_test": accuracy(evaluate, v_fc, codes_te, y_te, f_te),
                  "retain_test": accuracy(evaluate, v_fc, codes_te, y_te, r_te),
                  "forget_train": accuracy(evaluate, v_fc, codes_d, y_d, ~keep)},
        "oracle": {"forget_test": accuracy(evaluate, v_or, codes_te, y_te, f_te),
                   "retain_test": accuracy(evaluate, v_or, codes_te, y_te, r_te)},
    }  # fmt: skip
    print("class forgetting:", json.dumps(results["class_forgetting"]))

    # --- sample-level forgetting + MIA
    loss_te, _ = evaluate(v_full, codes_te, y_te)
    results["sample_forgetting"] = []
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
        v_or, _ = fit_exact(model, variables, codes_d[~fset], y_d[~fset], ids_d[~fset],
                            estimator=est, key_init_ids=[])  # fmt: skip
        entry = {"fraction": frac, "num_forgotten": n_f, "seconds": dt,
                 "update_seconds": rec.params["update_seconds"],
                 "exact_record": rec.params["exact"],
                 "bit_identical_to_oracle": same_bits(v_un["params"]["values"],
                                                      v_or["params"]["values"])}  # fmt: skip
        for tag, v in (("before", v_full), ("after", v_un), ("oracle", v_or)):
            loss_f, pred_f = evaluate(v, codes_d[fset], y_d[fset])
            loss_t, _ = evaluate(v, codes_te, y_te)
            entry[tag] = {
                "forget_acc": float(np.mean(pred_f == y_d[fset])),
                "test_acc": accuracy(evaluate, v, codes_te, y_te),
                "mia": mia_accuracy(loss_f, loss_t, args.seed),
                "forget_mean_loss": float(loss_f.mean()), "test_mean_loss": float(loss_t.mean()),
            }  # fmt: skip
        if frac == args.forget_fractions[0]:  # MIA reference: the SGD model on the same set
            loss_f, _ = evaluate(v_sgd, codes_d[fset], y_d[fset])
            entry["sgd_before_mia"] = mia_accuracy(loss_f, evaluate(v_sgd, codes_te, y_te)[0],
                                                   args.seed)  # fmt: skip
        results["sample_forgetting"].append(entry)
        print("sample forgetting:", json.dumps(entry))

    # --- sequential requests == one request of their union
    n_seq = min(args.sequential, ids_d.size // 2)
    chosen = rng.choice(ids_d, max(n_seq, int(0.01 * ids_d.size)), replace=False)
    requests = np.array_split(chosen, n_seq)
    v_seq, s_seq = v_full, s_full
    times = []
    for req in requests:
        t = time.perf_counter()
        v_seq, s_seq, _ = remove_examples(v_seq, s_seq, req, estimator=est)
        jax.block_until_ready(v_seq)
        times.append(time.perf_counter() - t)
    v_union, s_union, _ = remove_examples(v_full, s_full, chosen, estimator=est)
    results["sequential"] = {
        "requests": n_seq, "examples": int(chosen.size),
        "median_seconds_per_request": float(np.median(times)),
        "total_seconds": float(np.sum(times)),
        "bit_identical_to_union": same_bits(v_seq["params"]["values"],
                                            v_union["params"]["values"])
        and same_bits(s_seq.counts, s_union.counts),
    }  # fmt: skip
    print("sequential:", json.dumps(results["sequential"]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
