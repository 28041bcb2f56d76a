"""The ImageNet-scale benchmark at a reduced size: one device and a codebook mesh agree."""

import jax

if jax.device_count() < 8:
    jax.config.update("jax_num_cpu_devices", 8)

from script_testutil import ROOT, load_script  # noqa: E402

TINY = [
    "--classes",
    "10",
    "--rows-per-class",
    "24",
    "--val-per-class",
    "6",
    "--codebooks",
    "8",
    "--keys",
    "32",
    "--n-keys",
    "3",
    "--key-rows",
    "256",
    "--key-epochs",
    "1",
    "--probe-epochs",
    "1",
    "--timing-classes",
    "3",
    "--sample-classes",
    "2",
    "--oracle-classes",
    "1",
    "--no-plot",
]
KEYS = (
    "train_rows",
    "classes",
    "peak_rss_mib",
    "forget_one_class_ms",
    "every_class_eval_s",
    "classes_evaluated",
    "val_accuracy",
    "probe_accuracy",
)


def test_one_device_and_eight_give_identical_statistics_and_accuracies(tmp_path):
    import sys

    sys.path.insert(0, str(ROOT / "experiments" / "benchmarks"))
    script = load_script("experiments/benchmarks/imagenet_scale.py", "imagenet_scale_script")
    cache = ["--cache", str(tmp_path / "cache")]
    one = script.main([*TINY, *cache, "--out", str(tmp_path / "one.json")])
    eight = script.main([*TINY, "--devices", "8", "--out", str(tmp_path / "eight.json")])
    # The encoding passes do not depend on the devices: a cached 8-device run equals both.
    cached = script.main([*TINY, "--devices", "8", *cache, "--out", str(tmp_path / "c.json")])
    assert not one["cache"]["hit"] and cached["cache"]["hit"] and eight["cache"] is None
    assert "key init" not in cached["stages"] and "load cache" in cached["stages"]
    assert all(k in one for k in KEYS) and one["classes_evaluated"] == 10
    assert one["statistics"]["sha256"] == eight["statistics"]["sha256"]
    for key in ("val_accuracy", "probe_accuracy", "per_class", "uve", "retrain_oracle"):
        assert one[key] == eight[key] == cached[key], key
    assert one["key_init"] == cached["key_init"]
    # A cache of other settings or code is recomputed and replaced, not silently reused.
    meta = tmp_path / "cache" / "meta.json"
    meta.write_text(meta.read_text().replace(one["cache"]["fingerprint"], "0" * 16))
    again = script.main([*TINY, *cache, "--out", str(tmp_path / "again.json")])
    assert not again["cache"]["hit"] and again["per_class"] == one["per_class"]
    assert one["cache"]["fingerprint"] in meta.read_text()
    meta.write_text("{")  # an unreadable cache is a miss too
    corrupt = script.main([*TINY, *cache, "--out", str(tmp_path / "corrupt.json")])
    assert not corrupt["cache"]["hit"] and one["cache"]["fingerprint"] in meta.read_text()
    assert one["exact_removal"]["counts_bit_identical_to_recount"]
    assert (
        one["exact_removal"]["val_accuracy_after"] == eight["exact_removal"]["val_accuracy_after"]
    )
    for name in ("values", "pairs", "queries", "codes"):
        memory = eight["device_memory"][name]
        assert memory["per_device_bytes"] * 8 == memory["total_bytes"], name
    assert one["retrain_oracle"]["forget_mean"] == 0.0  # the class's values are gone
    # Every class at once (checked against the per-class path on 4 classes by the run) and
    # class by class give the same accuracies, and the same sizes on one device and eight.
    sizes = ("masked_pairs_mean", "beyond_ranking_mean", "affected_rows_mean")
    sizes += ("undecided_rows_mean", "past_first_fallback_mean")
    assert one["uva"]["every_class"] == "at-once" and len(one["uva"]["checked_by_per_class"]) == 4
    assert {k: one["uva"][k] for k in sizes} == {k: eight["uva"][k] for k in sizes}
    per_class = script.main(
        [*TINY, *cache, "--every-class", "per-class", "--out", str(tmp_path / "per.json")]
    )
    assert (
        per_class["per_class"] == one["per_class"]
        and per_class["uva"]["every_class"] == "per-class"
    )
    for key in sizes[:3]:
        assert per_class["uva"][key] == one["uva"][key], key
