"""The tables of ``experiments/model_quality.py``: one run's rows, and every run of a suite."""

from __future__ import annotations

HEADER = (
    "| recipe | config | test acc | probe acc | gap (pts) | UvA N | UvA forget | "
    "UvA retain Δ mean/worst | UvE N | UvE forget | UvE retain Δ mean/worst | keys s | values s |"
)


def _unl(u: dict | None) -> list[str]:
    if u is None:
        return ["-", "-", "-"]
    n = str(u["n"]) + ("" if u["reached"] else " (not reached)")
    return [
        n,
        f"{100 * u['forget_max']:.1f}%",
        f"{u['retain_delta_mean']:+.2f} / {u['retain_delta_worst']:+.2f}",
    ]


def markdown_row(row: dict) -> str:
    """One recipe's row of the table (printed as each recipe finishes)."""
    unl = row.get("unlearning", {})
    cells = [
        row["name"],
        row["config"],
        f"{100 * row['test_accuracy']:.2f}",
        f"{100 * row['probe_accuracy']:.2f}",
        f"{row['gap_points']:.2f}",
        *_unl(unl.get("uva")),
        *_unl(unl.get("uve")),
        f"{row['keys_s']:.0f}",
        f"{row['values_s']:.0f}",
    ]
    return "| " + " | ".join(cells) + " |"


def markdown(result: dict) -> str:
    lines = [
        f"# Model quality: {result['source']} (train {result['n_train']}, test {result['n_test']})",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Linear probe (sklearn logistic regression, standardised): "
        f"{100 * result['probe']['test_accuracy']:.2f}% test.",
        "UvA/UvE: every class forgotten on its own; N = first doubling-grid value at which all "
        "classes reach 0% forget accuracy on the test subset; retain Δ in points vs the "
        "original model (mean over classes / worst class).",
        "",
        HEADER,
        "|" + "---|" * (HEADER.count("|") - 1),
    ]
    lines += [markdown_row(r) for r in result["rows"]]
    return "\n".join(lines) + "\n"


def suite_markdown(results: list[tuple[str, dict]], command: str) -> str:
    """One table of every run: each row names its run (the run's source, probe and mask mode)."""
    header = "| run | " + HEADER[2:].replace("| probe acc |", "| probe acc | mask |")
    lines = [
        "# Model quality: every run of the suite",
        "",
        f"Command: `{command}`",
        "",
        "Each run's own table and command are in its folder. UvA/UvE: every class forgotten on its "
        "own; N = first doubling-grid value at which all classes reach 0% forget accuracy on the "
        "test subset; retain Δ in points vs the original model (mean over classes / worst class).",
        "",
        header,
        "|" + "---|" * (header.count("|") - 1),
    ]
    for name, result in results:
        for row in result["rows"]:
            mode = row.get("unlearning", {}).get("mask_mode", "-")
            cells = markdown_row(row).split(" | ")
            cells.insert(4, mode)  # after probe acc
            lines.append(f"| {name} ({result['source']}) | " + " | ".join(cells)[2:])
    return "\n".join(lines) + "\n"
