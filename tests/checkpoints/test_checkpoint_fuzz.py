"""Fuzzing the checkpoint API: a correct round trip, or an error that names the bad argument."""

import numpy as np
import pytest
from flax import traverse_util
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dkvb_jax import checkpoints
from dkvb_jax._validation import variable_specs
from dkvb_jax.config import DKVBConfig

CONFIGS = st.builds(
    lambda c, k, d, e, n: DKVBConfig(
        embed_dim=e, num_classes=n, num_codebooks=c, num_keys=k, key_dim=d
    ),
    st.integers(1, 3),
    st.integers(1, 6),
    st.integers(1, 3),
    st.integers(1, 6),
    st.integers(1, 4),
)


@st.composite
def cases(draw):
    config = draw(CONFIGS)
    built_for = config if draw(st.booleans()) else draw(CONFIGS)
    specs = variable_specs(built_for)
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    flat = {
        path: (rng.random(shape) < 0.3) if np.issubdtype(dtype, np.bool_) else rng.normal(size=shape).astype(dtype)
        for path, (shape, dtype) in specs.items()
    }
    paths = sorted(flat)
    poison = draw(st.sampled_from([None, np.nan, np.inf, -np.inf]))
    floats = [p for p in paths if flat[p].dtype == np.float32 and flat[p].size]
    if poison is not None and floats:
        leaf = flat[draw(st.sampled_from(floats))]
        leaf.flat[draw(st.integers(0, leaf.size - 1))] = poison
    else:
        poison = None
    cast = draw(st.sampled_from([None, np.float16, np.float64, np.int32, np.bool_]))
    if cast is not None:
        p = draw(st.sampled_from(paths))
        flat[p] = flat[p].astype(cast)
    variables = traverse_util.unflatten_dict(flat, sep="/")
    bad = set()
    if (
        specs != variable_specs(config)
        or poison is not None
        or any(np.dtype(flat[p].dtype) != specs[p][1] for p in paths)
    ):
        bad.add("variables")
    step = draw(st.one_of(st.none(), st.integers(-2, 4), st.sampled_from([True, "1", 1.5])))
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
        bad.add("step")
    where = draw(st.sampled_from(["folder", "folder", "file", "under-a-file"]))
    if where != "folder":
        bad.add("directory")
    read_step = draw(st.one_of(st.none(), st.integers(-1, 5)))
    wrong_config = draw(st.booleans())
    return config, variables, step, where, read_step, wrong_config, bad


def _names_one_of(error, names):
    message = str(error).lower()
    assert any(name in message for name in names), (names, str(error))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_save_restore_read_meta(tmp_path_factory, case):
    config, variables, step, where, read_step, wrong_config, bad = case
    root = tmp_path_factory.mktemp("fuzz")
    directory = root / "ckpt"
    if where != "folder":
        (root / "ckpt").write_text("a file")
        directory = directory / "sub" if where == "under-a-file" else directory
    if bad:
        with pytest.raises((ValueError, TypeError)) as e:
            checkpoints.save_model(directory, config, variables, step=step)
        _names_one_of(e.value, bad)
        return
    saved = checkpoints.save_model(directory, config, variables, step=step)
    assert saved == (0 if step is None else step)
    other = config.replace(num_keys=config.num_keys + 1) if wrong_config else None
    if read_step is not None and read_step != saved:
        with pytest.raises(ValueError) as e:
            checkpoints.restore_model(directory, step=read_step)
        _names_one_of(e.value, ["step"])
        return
    if other is not None:
        with pytest.raises(checkpoints.CheckpointError) as e:
            checkpoints.restore_model(directory, config=other, step=read_step)
        _names_one_of(e.value, ["config"])
    restored = checkpoints.restore_model(directory, config=config, step=read_step)
    assert restored.step == saved == checkpoints.read_meta(directory, read_step)[0]
    got = traverse_util.flatten_dict(restored.variables, sep="/")
    want = traverse_util.flatten_dict(variables, sep="/")
    assert sorted(got) == sorted(want)
    for path, leaf in want.items():
        assert np.asarray(got[path]).dtype == leaf.dtype
        assert np.asarray(got[path]).tobytes() == leaf.tobytes()
