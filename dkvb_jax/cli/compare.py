"""dkvb compare and demo: the class-unlearning comparison, and its offline demo."""

from __future__ import annotations

import pathlib
import sys
import time

from dkvb_jax.cli.common import emit, machine_info
from dkvb_jax.cli.config import apply_config_defaults, experiment_config
from dkvb_jax.cli.embeddings import key_data_of, key_rows_of, load_embeddings, train_namespace


def _run_compare(args, cfg, out: pathlib.Path) -> int:
    from dkvb_jax.experiment import run_class_unlearning, save_plots
    from dkvb_jax.unlearning import get_method

    emb = load_embeddings(args)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result = run_class_unlearning(
        (emb.x_train, emb.y_train),
        (emb.x_test, emb.y_test),
        cfg,
        key_data=key_data_of(args, emb),
        checkpoint_dir=out / "checkpoint",
        cache_dir=out / "rows",
        encoder=emb.source.get("encoder"),
        dataset=train_namespace(emb),
        key_rows=key_rows_of(args),
        meta={
            "source": emb.source,
            "machine": machine_info(),
            "command": " ".join(["dkvb", *sys.argv[1:]]),
        },
        progress=not args.no_progress,
    )
    secs = time.perf_counter() - start
    paths = result.save(out)
    paths.update(save_plots(result, out, class_names=emb.class_names or None))
    names = emb.class_names
    fc = ", ".join(f"{c} ({names[c]})" if c < len(names) else str(c) for c in result.forget_classes)
    payload = {"out": str(out), "seconds": secs, "files": paths, **result.to_dict()}
    sizes = "".join(
        f";  {get_method(m).label} {get_method(m).size.name} = {n}" for m, n in result.sizes.items()
    )
    text = (
        f"forget class: {fc}{sizes}\n\n"
        + result.table.to_markdown()
        + f"\n\nwrote {', '.join(sorted(pathlib.Path(p).name for p in paths.values()))} to {out} "
        f"({secs:.0f} s)"
    )
    emit(args, payload, text)
    return 0


def cmd_compare(args) -> int:
    apply_config_defaults(args)
    return _run_compare(args, experiment_config(args), pathlib.Path(args.out))


# The demo's model: 2,000 training images are ~200 per class. 128 codebooks x 256 keys gives
# about 8 training images per key on average, so most values are trained, while each class still
# owns ~25 keys per codebook for UvA to mask; 10 key epochs and 30 value epochs take seconds
# because value training runs on codes computed once. 1024-key codebooks would leave most pairs
# with no training example on this sample.
# The shipped sample has 2,000 training rows: LDA needs a larger held-out share of so few rows,
# and the 1,400 counted rows fill 128 keys per codebook better than 256.

DEMO = dict(
    num_codebooks=128,
    num_keys=128,
    key_dim=14,
    key_epochs=10,
    holdout_fraction=0.3,
    baselines=("finetune",),
    dkvb_finetune=False,
    n_a_grid=(1, 2, 4, 8, 16, 32, 64, 128),
    n_e_grid=(1, 2, 5, 10, 20, 50, 100, 200),
)


def cmd_demo(args) -> int:
    args.dataset = args.dataset or "cifar10_sample"
    args.encoder = args.encoder or "mobilenet_v1"
    args.embeddings = None
    args.key_dataset = None
    return _run_compare(args, experiment_config(args, base=DEMO), pathlib.Path(args.out))
