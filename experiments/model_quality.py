"""Model quality: DKVB test accuracy against a linear probe, with unlearning checked on each model.

One command, one table. Every recipe (model shape, input preprocessing, key initialisation,
value fitting) is fitted on the same cached embeddings, evaluated on the test split, and then
unlearned class by class with UvA and UvE on a test subset: the table reports the smallest N
(from a doubling grid) at which *every* class's forget accuracy reaches the target (0 by
default), and the retain-accuracy change there (mean over classes and the worst class).

    python experiments/model_quality.py --encoder cifar_resnet20 --out experiments/results/model_quality/cifar_resnet20
    python experiments/model_quality.py --quick --out /tmp/mq          # subsets, a few minutes
    python experiments/model_quality.py --recipes experiments/configs/model_quality.json

Writes ``model_quality.md`` (the table) and ``model_quality.json`` (every number, the recipes
and the command) into ``--out``. ``--suite FILE`` runs every run a suite file lists (each into
``--out/<name>``, reusing a saved run whose arguments match unless ``--force``) and writes one
table of all of them, ``--out/results.md``: the table behind the README's choice of defaults.

    python experiments/model_quality.py --suite experiments/configs/model_quality_suite.json \
        --cache-dir $DKVB_CACHE_DIR --out experiments/results/model_quality

``--synthetic`` swaps the embeddings for a small clustered problem (used by the smoke test; the
numbers mean nothing).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import shlex
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from dkvb_jax.config import DKVBConfig
from dkvb_jax.embedding import DEFAULT_CACHE_DIR
from dkvb_jax.exact import EstimatorConfig, fit_exact
from dkvb_jax.model import DKVB
from dkvb_jax.model.preprocess import KINDS, fit_affine, fold_affine
from dkvb_jax.training import (
    KeyInitConfig,
    ValueTrainConfig,
    compute_codes,
    fit_keys,
    key_usage,
    train_values,
)
from dkvb_jax.unlearning import fast_eval
from dkvb_jax.unlearning.masking import MASK_MODES

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))  # the sibling report module
from model_quality_report import markdown, markdown_row, suite_markdown  # noqa: E402

DEFAULT_RECIPES = pathlib.Path(__file__).parent / "configs" / "model_quality.json"


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One row of the table.

    Attributes:
      name: row label.
      model: DKVBConfig fields besides embed_dim / num_classes.
      preprocess: ``none``, ``standardize``, ``pca_whiten`` (fitted on the key rows) or ``lda``
        (on the labelled train rows), folded into the projection.
      key_init: KeyInitConfig fields.
      key_rows: unlabelled train rows the keys are fitted on (None: all).
      values: ``exact`` (closed form from label counts) or ``train`` (optax).
      estimator: EstimatorConfig fields (``exact``).
      train: ValueTrainConfig fields (``train``).
    """

    name: str
    model: dict
    preprocess: str = "none"
    key_init: dict = dataclasses.field(default_factory=dict)
    key_rows: int | None = None
    values: str = "exact"
    estimator: dict = dataclasses.field(default_factory=dict)
    train: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.preprocess not in KINDS:
            raise ValueError(
                f"recipe {self.name!r}: preprocess must be one of {KINDS}, got {self.preprocess!r}."
            )
        if self.values not in ("exact", "train"):
            raise ValueError(
                f"recipe {self.name!r}: values must be 'exact' or 'train', got {self.values!r}."
            )

    @classmethod
    def from_dict(cls, d: dict) -> Recipe:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown recipe fields {sorted(unknown)}; known: {sorted(known)}.")
        return cls(**d)

    def describe(self) -> str:
        m = self.model
        parts = [
            f"C={m.get('num_codebooks', 256)} K={m.get('num_keys', 4096)} "
            f"d={m.get('key_dim', 14)} top{m.get('top_k', 1)}",
            self.preprocess,
            "keys:" + ",".join(f"{k}={v}" for k, v in sorted(self.key_init.items())),
        ]
        if self.key_rows:
            parts.append(f"key_rows={self.key_rows}")
        detail = self.estimator if self.values == "exact" else self.train
        parts.append(self.values + (":" + ",".join(f"{k}={v}" for k, v in detail.items())))
        return "; ".join(parts)


@dataclasses.dataclass
class Data:
    x: np.ndarray
    y: np.ndarray
    xt: np.ndarray
    yt: np.ndarray
    num_classes: int


def load_recipes(path: pathlib.Path, only: list[str] | None = None) -> list[Recipe]:
    if not path.exists():
        raise FileNotFoundError(f"recipe file {path} not found; pass --recipes with a JSON list.")
    recipes = [Recipe.from_dict(d) for d in json.loads(path.read_text())]
    if only:
        missing = set(only) - {r.name for r in recipes}
        if missing:
            raise ValueError(f"--only names {sorted(missing)} are not recipes in {path}.")
        recipes = [r for r in recipes if r.name in only]
    return recipes


def synthetic_data(seed: int = 0, dim: int = 16, classes: int = 4, n: int = 400) -> Data:
    """Clustered Gaussian classes (two clusters each), for smoke tests."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(2 * classes, dim)) * 3

    def sample(m):
        c = rng.integers(0, 2 * classes, m)
        return (centres[c] + rng.normal(size=(m, dim))).astype(np.float32), (c // 2).astype(
            np.int32
        )

    x, y = sample(n)
    xt, yt = sample(n // 2)
    return Data(x, y, xt, yt, classes)


def cached_data(encoder: str, dataset: str, data_dir: str, cache_dir: str) -> Data:
    from dkvb_jax.embedding import embed_dataset

    tr = embed_dataset(encoder, dataset, "train", data_dir=data_dir, cache_dir=cache_dir)
    te = embed_dataset(encoder, dataset, "test", data_dir=data_dir, cache_dir=cache_dir)
    y = np.asarray(tr.labels, np.int32)
    return Data(
        np.asarray(tr.embeddings, np.float32),
        y,
        np.asarray(te.embeddings, np.float32),
        np.asarray(te.labels, np.int32),
        int(max(y.max(), np.max(te.labels)) + 1),
    )


def subset(data: Data, n_train: int | None, n_test: int | None, seed: int = 0) -> Data:
    rng = np.random.default_rng(seed)
    tr = np.sort(rng.permutation(len(data.y))[:n_train]) if n_train else slice(None)
    te = np.sort(rng.permutation(len(data.yt))[:n_test]) if n_test else slice(None)
    return Data(data.x[tr], data.y[tr], data.xt[te], data.yt[te], data.num_classes)


def _doubling(upper: int) -> list[int]:
    ns, n = [], 1
    while n <= upper:
        ns.append(n)
        n *= 2
    return ns


def _first_hit(rows: list[dict], target: float) -> dict:
    """The first grid entry where every class reached the target, else the last one tried."""
    for row in rows:
        if row["forget_max"] <= target + 1e-9:
            return {**row, "reached": True}
    return {**rows[-1], "reached": False}


def unlearning_scan(
    model: DKVB,
    variables: dict,
    data: Data,
    usage: jax.Array,
    *,
    eval_rows: int,
    max_n_uva: int,
    max_n_uve: int,
    target: float = 0.0,
    mode: str = "search",
) -> dict:
    """UvA and UvE on every class separately over a doubling grid of N, on a test subset.

    Returns, per method, the first grid N at which every class's forget accuracy is <= target,
    with the forget accuracy there (max over classes) and the retain-accuracy change (mean and
    worst over classes, in points).
    """
    cfg = model.config
    sub = subset(data, None, eval_rows, seed=1)
    labels = jnp.asarray(sub.yt)
    eye = jnp.eye(cfg.num_classes, dtype=bool)
    out = {}

    def scan(method, ns, metrics_fn):
        base_f, base_r = jax.vmap(lambda forget: metrics_fn(forget, 0))(eye)
        rows = []
        for n in ns:
            f, r = jax.vmap(metrics_fn, in_axes=(0, None))(eye, n)
            delta = 100.0 * (np.asarray(r) - np.asarray(base_r))
            rows.append(
                dict(
                    n=int(n),
                    forget_max=float(np.max(f)),
                    retain_delta_mean=float(delta.mean()),
                    retain_delta_worst=float(delta.min()),
                )
            )
            if rows[-1]["forget_max"] <= target + 1e-9:
                break
        out[method] = {**_first_hit(rows, target), "base_forget_mean": float(np.mean(base_f))}
        out[method]["grid"] = rows

    ns = _doubling(min(max_n_uva, cfg.num_keys - cfg.top_k))
    ranked = fast_eval.ranked_codes(model, variables, sub.xt, max(ns) + cfg.top_k)
    scan(
        "uva",
        ns,
        lambda forget, n: fast_eval.uva_metrics(
            model, variables, usage, forget, n, *ranked, labels, mode
        ),
    )

    per_class = [np.flatnonzero(data.y == c) for c in range(cfg.num_classes)]
    n_max = min(max_n_uve, min(len(p) for p in per_class))
    if n_max < 1:
        raise ValueError("UvE needs at least one training example of every class.")
    ns = _doubling(n_max)
    idx, valid = compute_codes(
        model, variables, np.concatenate([data.x[p[: max(ns)]] for p in per_class])
    )
    codes = (
        idx.reshape(cfg.num_classes, max(ns), *idx.shape[1:]),
        valid.reshape(cfg.num_classes, max(ns), *valid.shape[1:]),
    )
    depth = min(cfg.num_keys, (max(ns) + 1) * cfg.top_k)
    ranked = fast_eval.ranked_codes(model, variables, sub.xt, depth)

    def uve(forget, n):
        c = jnp.argmax(forget)
        own = (codes[0][c], codes[1][c])
        return fast_eval.uve_metrics(model, variables, own, forget, n, *ranked, labels, mode)

    scan("uve", ns, uve)
    return out


def fit_recipe(recipe: Recipe, data: Data, seed: int = 0) -> tuple[DKVB, dict, dict]:
    """Fits keys and values of one recipe; returns the model, variables and timings (s)."""
    cfg = DKVBConfig(embed_dim=data.x.shape[1], num_classes=data.num_classes, **recipe.model)
    model = DKVB(cfg)
    k_init, k_keys, k_vals = jax.random.split(jax.random.key(seed), 3)
    variables = model.init(k_init, jnp.zeros((1, cfg.embed_dim), jnp.float32))
    variables = jax.tree.map(jnp.asarray, dict(variables))
    key_x = data.x if recipe.key_rows is None else subset(data, recipe.key_rows, 1, seed).x
    t0 = time.perf_counter()
    if recipe.preprocess == "lda":  # supervised: the labelled rows the values are fitted on
        variables = fold_affine(variables, fit_affine(data.x, "lda", labels=data.y))
    elif recipe.preprocess != "none":
        variables = fold_affine(variables, fit_affine(key_x, recipe.preprocess))
    variables, report = fit_keys(
        model,
        variables,
        key_x,
        key=k_keys,
        config=KeyInitConfig(**recipe.key_init),
        progress=False,
    )
    jax.block_until_ready(variables)
    t1 = time.perf_counter()
    if recipe.values == "exact":
        variables, _ = fit_exact(
            model, variables, data.x, data.y, estimator=EstimatorConfig(**recipe.estimator)
        )
    else:
        variables, _ = train_values(
            model,
            variables,
            data.x,
            data.y,
            key=k_vals,
            config=ValueTrainConfig(**recipe.train),
            progress=False,
        )
    jax.block_until_ready(variables)
    t2 = time.perf_counter()
    times = dict(
        keys_s=t1 - t0,
        values_s=t2 - t1,
        quantisation_error=report.quantisation_error[-1],
        dead_fraction=report.dead_fraction[-1],
    )
    return model, variables, times


def accuracy(model: DKVB, variables: dict, x: np.ndarray, y: np.ndarray) -> float:
    idx, valid = compute_codes(model, variables, x)
    pred = jax.jit(lambda v, i, m: model.apply(v, i, m, method=DKVB.decode_codes).argmax(-1))(
        variables, idx, valid
    )
    return float(np.mean(np.asarray(pred) == y))


def run(args: argparse.Namespace, argv: list[str]) -> dict:
    if args.synthetic:
        data = synthetic_data()
        source = "synthetic"
    else:
        data = cached_data(args.encoder, args.dataset, args.data_dir, args.cache_dir)
        source = f"{args.encoder}/{args.dataset}"
    if args.quick:
        data = subset(data, args.quick_train, args.quick_test)
    recipes = load_recipes(pathlib.Path(args.recipes), args.only)
    if args.quick:
        # Cheaper key init: fewer rows and epochs; the recipe is otherwise unchanged.
        recipes = [
            dataclasses.replace(
                r,
                key_init={**r.key_init, "epochs": min(r.key_init.get("epochs", 10), 3)},
                key_rows=min(r.key_rows or len(data.y), len(data.y)),
            )
            for r in recipes
        ]

    from dkvb_jax.evaluation.probe import linear_probe

    probe = linear_probe(data.x, data.y, data.xt, data.yt)
    print(f"linear probe: test {probe.test_accuracy:.4f} ({probe.fit_seconds:.1f}s)", flush=True)
    rows = []
    for recipe in recipes:
        model, variables, times = fit_recipe(recipe, data, seed=args.seed)
        acc = accuracy(model, variables, data.xt, data.yt)
        row = dict(
            name=recipe.name,
            config=recipe.describe(),
            test_accuracy=acc,
            probe_accuracy=probe.test_accuracy,
            gap_points=100.0 * (probe.test_accuracy - acc),
            **times,
        )
        if not args.no_unlearning:
            usage = key_usage(model, variables, data.x, data.y)
            row["unlearning"] = unlearning_scan(
                model,
                variables,
                data,
                usage,
                eval_rows=args.unlearn_eval_rows,
                max_n_uva=args.max_n_uva,
                max_n_uve=args.max_n_uve,
                mode=args.mask_mode,
            )
            row["unlearning"]["mask_mode"] = args.mask_mode
        rows.append(row)
        print(markdown_row(row), flush=True)
    return dict(
        command=_command(argv),
        source=source,
        quick=args.quick,
        n_train=int(len(data.y)),
        n_test=int(len(data.yt)),
        probe=dataclasses.asdict(probe),
        recipes=[dataclasses.asdict(r) for r in recipes],
        rows=rows,
    )


def _command(argv: list[str]) -> str:
    """The command line a result records (and a suite parses back to compare runs)."""
    return shlex.join(["python", "experiments/model_quality.py", *argv])


# Arguments that say where things are, not what is measured: a saved run is reused across them.
_LOCATION_ARGS = ("out", "cache_dir", "data_dir", "suite", "force")


def _measured_args(argv: list[str]) -> dict:
    return {k: v for k, v in vars(parse_args(argv)).items() if k not in _LOCATION_ARGS}


def run_suite(args: argparse.Namespace) -> list[tuple[str, dict]]:
    """Runs (or reuses) every run of the suite file; returns `(name, result)` pairs in order."""
    path = pathlib.Path(args.suite)
    if not path.exists():
        raise FileNotFoundError(f"suite file {path} not found; pass --suite with a JSON list.")
    entries = json.loads(path.read_text())
    names = [e.get("name") for e in entries]
    if not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise ValueError(f"suite {path}: every run needs a unique non-empty 'name', got {names}.")
    results = []
    for entry in entries:
        out = pathlib.Path(args.out) / entry["name"]
        run_argv = [
            *entry.get("args", []),
            "--cache-dir",
            args.cache_dir,
            "--data-dir",
            args.data_dir,
            "--out",
            str(out),
        ]
        saved = out / "model_quality.json"
        if saved.exists() and not args.force:
            result = json.loads(saved.read_text())
            before = shlex.split(result["command"])[2:]  # after `_command`'s two words
            if _measured_args(before) == _measured_args(run_argv):
                print(f"{entry['name']}: reusing {saved}", flush=True)
                results.append((entry["name"], result))
                continue
        print(f"{entry['name']}: running {' '.join(entry.get('args', []))}", flush=True)
        results.append((entry["name"], main(run_argv)))
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--encoder", default="cifar_resnet20", help="cached encoder name")
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--data-dir", default="../shared/data/cifar10")
    p.add_argument(
        "--cache-dir",
        default=str(DEFAULT_CACHE_DIR),
        help="embedding cache, filled by `dkvb embed` (default $DKVB_CACHE_DIR or ~/.cache/dkvb_jax)",
    )
    p.add_argument("--out", default="outputs/model_quality", help="output folder")
    p.add_argument("--recipes", default=str(DEFAULT_RECIPES), help="JSON list of recipes")
    p.add_argument("--only", nargs="*", help="recipe names to run (default: all)")
    p.add_argument("--quick", action="store_true", help="train/test subsets, <= 3 key epochs")
    p.add_argument("--quick-train", type=int, default=10000)
    p.add_argument("--quick-test", type=int, default=2000)
    p.add_argument("--unlearn-eval-rows", type=int, default=2000, help="test rows for unlearning")
    p.add_argument("--max-n-uva", type=int, default=256, help="largest N_a tried (doubling grid)")
    p.add_argument("--max-n-uve", type=int, default=256, help="largest N_e tried (doubling grid)")
    p.add_argument("--no-unlearning", action="store_true")
    p.add_argument(
        "--mask-mode",
        choices=MASK_MODES,
        default="search",
        help="how UvA/UvE mask the selected pairs",
    )
    p.add_argument("--synthetic", action="store_true", help="small synthetic data (smoke test)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--suite",
        default=None,
        help="JSON list of runs ({name, args}); one combined table in --out",
    )
    p.add_argument("--force", action="store_true", help="with --suite: rerun saved runs too")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.suite:
        results = run_suite(args)
        text = suite_markdown(results, _command(argv))
        path = pathlib.Path(args.out) / "results.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(text + f"\nwrote {path}")
        return {name: result for name, result in results}
    result = run(args, argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "model_quality.json").write_text(json.dumps(result, indent=2))
    (out / "model_quality.md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
