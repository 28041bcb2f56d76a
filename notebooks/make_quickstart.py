"""Builds notebooks/quickstart.ipynb from the cells below, executed, so readers see its outputs.

    python notebooks/make_quickstart.py             # build and execute it (CPU)
    python notebooks/make_quickstart.py --no-execute

The notebook is generated, not hand-edited, so it stays reviewable as code and reproducible;
tests/experiment/test_notebook.py checks that the committed one matches these cells and executes
them with smaller parameters (injected after the cell tagged ``parameters``, as papermill does).
"""

import argparse
import os
import pathlib
import tempfile

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

PATH = pathlib.Path(__file__).with_name("quickstart.ipynb")

PARAMETERS = new_code_cell(
    "# Parameters. Any registered encoder works (dkvb_jax.list_encoders()); cifar_resnet20 and\n"
    "# mobilenet_v1 ship their weights, the others read theirs from the weights folder.\n"
    "ENCODER = 'cifar_resnet20'\n"
    "DATASET = 'cifar10_sample'  # 2,000 train / 500 test CIFAR-10 images shipped in the package\n"
    "# ExperimentConfig fields: the `dkvb demo` model (128 codebooks x 128 keys, LDA and keys on a\n"
    "# held-out 30%) and the fine-tune baseline on a linear head.\n"
    "CONFIG = dict(num_codebooks=128, num_keys=128, key_dim=14, key_epochs=10,\n"
    "              holdout_fraction=0.3, baselines=('finetune',), dkvb_finetune=False,\n"
    "              head_epochs=20)\n"
    "FORGET_EXAMPLES = 20  # training examples removed exactly in section 3\n"
    "SEED = 0",
    metadata={"tags": ["parameters"]},
)

CELLS = [
    new_markdown_cell(
        "# dkvb_jax quickstart\n\n"
        "Fit a discrete key-value bottleneck on frozen embeddings, then forget a class (by "
        "masking key-value pairs, and exactly from label counts), forget single training "
        "examples exactly, read the audit record and its certificate, and compare with "
        "fine-tuning. Runs offline on the CIFAR-10 sample shipped with the package, encoded "
        "once by the chosen encoder and cached (`$DKVB_CACHE_DIR`, default "
        "`~/.cache/dkvb_jax`). Change the encoder or the model in the next cell."
    ),
    PARAMETERS,
    new_code_cell(
        "import jax\n"
        "import numpy as np\n\n"
        "import dkvb_jax as dk\n"
        "from dkvb_jax.embedding import embed_dataset\n\n"
        "train = embed_dataset(ENCODER, DATASET, 'train', progress=False)\n"
        "test = embed_dataset(ENCODER, DATASET, 'test', progress=False)\n"
        "x, y, xt, yt = train.embeddings, train.labels, test.embeddings, test.labels\n"
        "print(f'{ENCODER} on {DATASET}: train {x.shape}, test {xt.shape}, '\n"
        "      f'{train.num_classes} classes')"
    ),
    new_markdown_cell(
        "## 1. Fit\n"
        "The default recipe (`certified`) holds out a stratified share of the training rows to "
        "fit the LDA projection and the keys (EMA k-means, then frozen), and derives the values "
        "in closed form from per-pair label counts of the other rows, D. Each input only "
        "touches the pairs it retrieves. The fit records which rows each part saw: that record, "
        "not the caller, decides later whether a removal is certified."
    ),
    new_code_cell(
        "from dkvb_jax.evaluation import accuracy, per_class_accuracy\n"
        "from dkvb_jax.experiment import ExperimentConfig, best_learned_class, fit_from_config\n\n"
        "cfg = ExperimentConfig(seed=SEED, **CONFIG)\n"
        "fit = fit_from_config(cfg, x, y, num_classes=train.num_classes, ids=train.ids,\n"
        "                      dataset=f'{DATASET}/train', encoder=ENCODER, progress=False)\n"
        "fitted, rows = fit.fitted, fit.rows  # rows: the training rows the values were fitted on\n"
        "model, variables = fitted.model, fitted.variables\n"
        "print(f'test accuracy {accuracy(model.apply, variables, xt, yt):.1%}; values fitted on '\n"
        "      f'{rows.size:,} rows, LDA and keys on {fit.holdout.size:,} held-out rows')\n"
        "for part in fitted.provenance.parts:\n"
        "    print(' ', part.describe())"
    ),
    new_markdown_cell(
        "## 2. Forget a class\n"
        "The paper's protocol forgets the class the model learned best. **UvA** masks, per "
        "codebook, the N_a keys that class retrieves most, read from the usage histogram stored "
        "at training time (no data pass); the sweep picks the smallest N_a that drives its "
        "training accuracy to 0. The **exact** removal subtracts the class's label counts and "
        "re-derives the values: the model equals one fitted without the class."
    ),
    new_code_cell(
        "from dkvb_jax.unlearning import accuracy_effect, sweep_uva, unlearn_via_activations\n\n"
        "forget = best_learned_class(per_class_accuracy(model.apply, variables, xt, yt))\n"
        "grid = [n for n in cfg.n_a_grid if n <= cfg.num_keys]\n"
        "sweep = sweep_uva(model, variables, fitted.usage, [forget], x[rows], y[rows], grid)\n"
        "n_a = sweep.smallest_n or max(sweep.ns)\n"
        "effect = accuracy_effect(model, xt, yt, [forget])\n"
        "uva, uva_record = unlearn_via_activations(model, variables, n_a, usage=fitted.usage,\n"
        "                                          classes=[forget], eval_fn=effect)\n"
        "exact, exact_stats, exact_record = dk.exact.remove_classes(variables, fitted.stats, forget)\n"
        "exact_record = exact_record.with_effect({'before': effect(variables),\n"
        "                                         'after': effect(exact)})\n"
        "print(f'forgetting class {forget} ({train.class_names[forget]}), test accuracy:')\n"
        "print(f\"  original         forget {uva_record.effect['before']['forget_accuracy']:6.1%}  \"\n"
        "      f\"retain {uva_record.effect['before']['retain_accuracy']:6.1%}\")\n"
        "for name, rec in ((f'UvA (N_a = {n_a})', uva_record), ('exact removal', exact_record)):\n"
        "    after = rec.effect['after']\n"
        "    print(f\"  {name:16} forget {after['forget_accuracy']:6.1%}  \"\n"
        "          f\"retain {after['retain_accuracy']:6.1%}\")"
    ),
    new_markdown_cell(
        "## 3. Forget examples, exactly\n"
        "A deletion request names training examples. `remove_examples` subtracts their stored "
        "counts (no encoder pass, no lookup) and re-derives the values; the result is bit for "
        "bit the model fitted without them, which the cell checks by refitting. That is the "
        "guarantee: the model is the one that never saw them, which may still classify them "
        "right from their neighbours, only with a little more loss."
    ),
    new_code_cell(
        "from dkvb_jax.evaluation import per_example_loss\n\n"
        "rng = np.random.default_rng(SEED)\n"
        "gone = np.sort(rng.choice(rows, FORGET_EXAMPLES, replace=False))  # rows of D\n"
        "removed, removed_stats, record = dk.exact.remove_examples(variables, fitted.stats,\n"
        "                                                          train.ids[gone])\n"
        "for name, v in (('before', variables), ('after', removed)):\n"
        "    acc = accuracy(model.apply, v, x[gone], y[gone])\n"
        "    loss = per_example_loss(model.apply, v, x[gone], y[gone]).mean()\n"
        "    print(f'{name:6}: the {gone.size} examples at accuracy {acc:6.1%}, mean loss {loss:.3f}')\n"
        "kept = np.setdiff1d(rows, gone)\n"
        "refit, _ = dk.exact.fit_exact(model, variables, x[kept], y[kept], train.ids[kept],\n"
        "                              estimator=cfg.value_config(),\n"
        "                              stats_config=cfg.stats_config())\n"
        "same = np.array_equal(refit['params']['values'], removed['params']['values'])\n"
        "print(f'values bit-identical to a refit without them: {same}')"
    ),
    new_markdown_cell(
        "## 4. The audit record and its certificate\n"
        "Every unlearning call returns a JSON-serialisable record: what was forgotten, hashes of "
        "the variables before and after, and a certificate derived from the recorded "
        "provenance. A removal is *certified* exact only if no frozen part (encoder, LDA, keys) "
        "saw the forgotten rows; with an encoder trained on CIFAR-10's training split "
        "(`cifar_resnet20`) the values are exact but the removal is not certified, and the "
        "record says why. Masking (UvA) is never exact."
    ),
    new_code_cell(
        "import json\n\n"
        "audit = json.loads(record.to_json())  # what a checkpoint's audit trail stores\n"
        "for field in ('method', 'forgotten_examples', 'hash_before', 'hash_after', 'timestamp',\n"
        "              'certificate'):\n"
        "    print(f'{field:18} {json.dumps(audit[field])}')\n"
        "print()\n"
        "for name, rec in (('exact removal of examples', record),\n"
        "                  ('exact removal of the class', exact_record), ('UvA', uva_record)):\n"
        "    cert = rec.certificate\n"
        "    print(f\"{name}: certified={cert['certified']}, values_exact={cert['values_exact']}\")\n"
        "    print(f\"  {cert['reason']}\")"
    ),
    new_markdown_cell(
        "## 5. Compare\n"
        "The paper's table: the original model, DKVB UvA / UvE / exact removal, and fine-tuning "
        "a linear head on the same embeddings; accuracy, membership inference (50% = the attack "
        "cannot tell members) and cost in XLA-counted FLOPs."
    ),
    new_code_cell(
        "from dkvb_jax.experiment import run_class_unlearning\n\n"
        "result = run_class_unlearning((x[rows], y[rows]), (xt, yt),\n"
        "                              cfg.replace(forget_classes=(forget,)), fitted=fitted,\n"
        "                              dataset=f'{DATASET}/train', encoder=ENCODER,\n"
        "                              progress=False)\n"
        "print(result.table.to_markdown())"
    ),
    new_markdown_cell("## 6. Plot\nForget / retain accuracy along the N_a sweep (paper, Fig. 2)."),
    new_code_cell(
        "import tempfile\n\n"
        "from IPython.display import Image\n\n"
        "from dkvb_jax.experiment import save_plots\n\n"
        "plots = save_plots(result, tempfile.mkdtemp(), class_names=train.class_names)\n"
        "Image(filename=plots['sweep_uva'])"
    ),
]


def build(parameters: dict | None = None) -> nbformat.NotebookNode:
    """The notebook; `parameters` (name -> value) go in a cell after the parameters cell."""
    cells = [nbformat.from_dict(c) for c in CELLS]
    if parameters:
        source = "\n".join(f"{name} = {value!r}" for name, value in parameters.items())
        at = next(i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", ()))
        cells.insert(at + 1, new_code_cell(source, metadata={"tags": ["injected-parameters"]}))
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    return nb


def execute(nb: nbformat.NotebookNode, workdir: str, timeout: int = 600) -> nbformat.NotebookNode:
    """Runs every cell in a fresh CPU kernel, in place; raises on the first failing cell."""
    import nbclient

    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    client = nbclient.NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": workdir}}
    )
    client.execute(env=env)
    return nb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-execute", action="store_true", help="write the cells only")
    args = parser.parse_args()
    nb = build()
    if not args.no_execute:
        with tempfile.TemporaryDirectory() as workdir:
            execute(nb, workdir)
    nbformat.write(nb, PATH)
    print(f"wrote {PATH}")


if __name__ == "__main__":
    main()
