"""The tables of ``experiments/certified_unlearning.py``: its per-encoder results as markdown."""

from __future__ import annotations

from tabulate import tabulate


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def _mia_cell(m: dict) -> str:
    return f"{100 * m['accuracy']:.1f} ± {100 * m['std']:.1f} (n={m['n_per_side']})"


SUMMARY_COLUMNS = (
    "encoder",
    "test acc",
    "probe",
    "gap (points)",
    "certified",
    "values rows",
    "held-out rows",
)
CLASS_COLUMNS = (
    "classes",
    "forget-test acc",
    "retain-test Δ",
    "retain-train acc",
    "MIA after (%)",
    "MIA oracle (%)",
    "= oracle",
    "certified",
    "ms",
)
FRACTION_COLUMNS = (
    "rows",
    "test acc (after / oracle)",
    "MIA after (%)",
    "MIA oracle (%)",
    "= oracle",
    "certified",
    "ms",
    "masking API: pairs masked",
    "masking API: retain-train acc",
)


def _summary_row(r: dict) -> list:
    rows = r["rows"]
    gap = f"{r['gap_points']:.2f}"
    return [
        r["encoder"],
        _pct(r["test_accuracy"]),
        _pct(r["probe_accuracy"]),
        gap,
        r["certified"],
        rows["values"],
        rows["held_out"],
    ]


def _class_row(c: dict) -> list:
    retain_test, retain_train = c["retain_test_acc"], c["retain_train_acc"]
    return [
        ",".join(map(str, c["classes"])),
        _pct(c["forget_test_acc"]["after"]),
        f"{100 * (retain_test['after'] - retain_test['before']):+.2f}",
        f"{_pct(retain_train['before'])} -> {_pct(retain_train['after'])}",
        *_shared_cells(c),
    ]


def _fraction_row(f: dict) -> list:
    m, test = f["masking"], f["test_acc"]
    return [
        f"{100 * f['fraction']:g}% ({f['examples']})",
        f"{_pct(test['after'])} / {_pct(test['oracle'])}",
        *_shared_cells(f),
        f"{m['pairs_masked']:,} / {m['pairs_total']:,}",
        f"{_pct(f['retain_train_acc']['before'])} -> {_pct(m['retain_train_acc_after'])}",
    ]


def _shared_cells(request: dict) -> list:
    """MIA after and of the oracle, = oracle, certified, ms: the cells both tables share."""
    mia = request["mia"]
    return [
        _mia_cell(mia["after"]),
        _mia_cell(mia["oracle"]),
        request["bit_identical_to_oracle"],
        request["certificate"]["certified"],
        f"{1000 * request['seconds']:.0f}",
    ]


def _sequential_line(r: dict) -> str:
    q, o, old = r["sequential"], r["full_oracle"], r["old_way"]["certificate"]
    return (
        f"Sequential: {q['requests']} requests of {q['rows_per_request']} rows equal one "
        f"request of their union bit for bit: {q['bit_identical_to_union']}; "
        f"{1000 * q['seconds_first_10pct_mean']:.0f} ms per request over the first tenth, "
        f"{1000 * q['seconds_last_10pct_mean']:.0f} ms over the last. Full retrain oracle "
        f"({o['examples']} rows): every leaf bit-identical: {o['all_bit_identical']}. "
        f"Old way (LDA and keys on D): certified {old['certified']} ({old['reason'][:160]}...)."
    )


def to_markdown(results: dict[str, dict]) -> str:
    lines = [
        tabulate([_summary_row(r) for r in results.values()], SUMMARY_COLUMNS, tablefmt="github")
    ]
    for r in results.values():
        for title, columns, rows in (
            ("classes forgotten", CLASS_COLUMNS, map(_class_row, r["classes"])),
            ("random rows of D forgotten", FRACTION_COLUMNS, map(_fraction_row, r["fractions"])),
        ):
            table = tabulate(list(rows), columns, tablefmt="github")
            lines += ["", f"### {r['encoder']}: {title}", "", table]
        lines += ["", _sequential_line(r)]
    return "\n".join(lines) + "\n"
