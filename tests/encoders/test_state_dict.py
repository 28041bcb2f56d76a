"""Tests for the torch-free state-dict reader/writer and the one-to-one Flax mapping."""

from __future__ import annotations

import pathlib
import tracemalloc
import zipfile

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file
from torch_subprocess import run_torch
from torch_zip_writer import pickle_unicode, save_torch_zip, write_torch_zip_raw

from dkvb_jax.encoders import state_dict as sd


def _arrays(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "conv.weight": rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
        "half": rng.normal(size=(5,)).astype(np.float16),
        "double": rng.normal(size=(2, 2)),
        "bn.num_batches_tracked": np.array(7, np.int64),  # 0-d, as torch stores it
        "mask": np.array([True, False, True]),
        "ids": np.arange(-3, 3, dtype=np.int32),
        "bytes": np.arange(4, dtype=np.uint8),
        "empty": np.zeros((0, 3), np.float32),
    }


def _save(arrays: dict[str, np.ndarray], path: pathlib.Path, fmt: str) -> pathlib.Path:
    path = path.with_suffix(".pt" if fmt == "pt" else ".safetensors")
    if fmt == "pt":
        save_torch_zip(arrays, path)
    else:
        save_file(arrays, str(path))
    return path


def _rewrite_zip(path: pathlib.Path, edit) -> None:
    """Rewrites the zip at `path` with `edit(name, data) -> data | None` (None drops the entry)."""
    with zipfile.ZipFile(path) as zf:
        entries = [(i.filename, zf.read(i)) for i in zf.infolist()]
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries:
            data = edit(name, data)
            if data is not None:
                zf.writestr(name, data)


def _replace_pkl(path: pathlib.Path, pkl: bytes) -> None:
    _rewrite_zip(path, lambda n, d: pkl if n.endswith("/data.pkl") else d)


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_round_trip_preserves_values_dtypes_and_shapes(tmp_path, fmt):
    arrays = _arrays(np.random.default_rng(0))
    loaded = sd.load_state_dict(_save(arrays, tmp_path / "ckpt", fmt))
    assert loaded.keys() == arrays.keys()
    for k, v in arrays.items():
        assert loaded[k].dtype == v.dtype and loaded[k].shape == v.shape, k
        np.testing.assert_array_equal(loaded[k], v, err_msg=k)


def test_bfloat16_in_both_formats(tmp_path):
    x = np.linspace(-2, 2, 6, dtype=np.float32).astype(ml_dtypes.bfloat16).reshape(2, 3)
    save_torch_zip({"w": x}, tmp_path / "a.pt")
    # The safetensors NumPy API cannot write bfloat16: write the (tiny) format by hand.
    header = b'{"w":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,12]}}'
    (tmp_path / "a.safetensors").write_bytes(
        len(header).to_bytes(8, "little") + header + x.tobytes()
    )
    for name in ("a.pt", "a.safetensors"):
        got = sd.load_state_dict(tmp_path / name)["w"]
        assert got.dtype == ml_dtypes.bfloat16
        np.testing.assert_array_equal(got, x)


def test_views_offsets_and_shared_storage(tmp_path):
    storage = np.arange(12, dtype=np.float32)
    tensors = {
        "full": ("0", 0, (3, 4), (4, 1)),
        "transposed": ("0", 0, (4, 3), (1, 4)),
        "row1": ("0", 4, (4,), (1,)),
        "every_other": ("0", 1, (2, 3), (6, 2)),
        "scalar": ("0", 11, (), ()),
    }
    path = tmp_path / "views.pt"
    write_torch_zip_raw(tensors, {"0": storage}, path)
    got = sd.load_state_dict(path)
    full = storage.reshape(3, 4)
    expected = {
        "full": full,
        "transposed": full.T,
        "row1": full[1],
        "every_other": np.array([[1, 3, 5], [7, 9, 11]], np.float32),
        "scalar": np.float32(11),
    }
    for k, v in expected.items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)
        assert got[k].base is None, f"{k} should own its memory, not view the whole storage"


def test_records_are_64_byte_aligned_like_torch(tmp_path):
    path = tmp_path / "a.pt"
    save_torch_zip(_arrays(np.random.default_rng(1)), path)
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
            assert start % 64 == 0, info.filename
            assert info.compress_type == zipfile.ZIP_STORED


def test_module_prefix_and_wrapper_dict_are_removed(tmp_path):
    path = tmp_path / "wrapped.pt"
    save_torch_zip({"module.a": np.ones(2, np.float32), "module.b": np.zeros(1, np.float32)}, path)
    assert sorted(sd.load_state_dict(path)) == ["a", "b"]
    with zipfile.ZipFile(path) as zf:
        inner = zf.read("wrapped/data.pkl")[2:-1]  # strip PROTO and STOP
    # {'state_dict': <inner OrderedDict>, 'epoch': 3}: what training scripts save.
    wrapped = (
        b"\x80\x02}(" + pickle_unicode("state_dict") + inner + pickle_unicode("epoch") + b"K\x03u."
    )
    _replace_pkl(path, wrapped)
    assert sorted(sd.load_state_dict(path)) == ["a", "b"]


_EVIL_PICKLES = {
    "os.system": b"\x80\x02cos\nsystem\nX\x07\x00\x00\x00exit 42\x85R.",
    "builtins.eval": b"\x80\x02cbuiltins\neval\nX\x04\x00\x00\x001+1\x85R.",
    "a model class": b"\x80\x02ctorchvision.models.resnet\nResNet\n)\x81.",
    "BUILD on a list": b"\x80\x02]}b.",
}


@pytest.mark.parametrize("name", sorted(_EVIL_PICKLES))
def test_restricted_unpickler_refuses_anything_but_weights(tmp_path, name):
    path = tmp_path / "evil.pt"
    save_torch_zip({"a": np.ones(1, np.float32)}, path)
    _replace_pkl(path, _EVIL_PICKLES[name])
    with pytest.raises(ValueError, match="refusing|malformed"):
        sd.load_state_dict(path)


def test_torchscript_archive_is_named(tmp_path):
    path = tmp_path / "ViT-B-32.pt"
    save_torch_zip({"a": np.ones(1, np.float32)}, path)
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("ViT-B-32/code/__torch__/model.py", "")
        zf.writestr("ViT-B-32/constants.pkl", b"\x80\x02).")
    with pytest.raises(ValueError, match="TorchScript"):
        sd.load_state_dict(path)


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
@pytest.mark.parametrize("keep", [0.97, 0.5, 0.02])
def test_truncated_files_raise_value_error_naming_the_file(tmp_path, fmt, keep):
    path = _save(_arrays(np.random.default_rng(2)), tmp_path / "ckpt", fmt)
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep))])
    with pytest.raises(ValueError, match="ckpt"):
        sd.load_state_dict(path)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda n, d: d[:-4] if n.endswith("/data/0") else d, "bytes, expected"),
        (lambda n, d: None if n.endswith("/data/0") else d, "missing"),
    ],
)
def test_damaged_storage_entries(tmp_path, edit, match):
    path = tmp_path / "a.pt"
    save_torch_zip({"w": np.ones((2, 3), np.float32)}, path)
    _rewrite_zip(path, edit)
    with pytest.raises(ValueError, match=match):
        sd.load_state_dict(path)


@pytest.mark.parametrize(
    "content, error, match",
    [
        (None, FileNotFoundError, "no file"),
        (
            b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.",
            ValueError,
            "x.bin: the file ends early",
        ),  # via torch_legacy
        (b"hello, not weights", ValueError, "neither"),
        (b"PK\x05\x06" + b"\0" * 18, ValueError, "not a torch.save archive"),
    ],
)
def test_unreadable_inputs(tmp_path, content, error, match):
    path = tmp_path / "x.bin"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(error, match=match):
        sd.load_state_dict(path)


SHARED_RESNET20 = (
    pathlib.Path(__file__).resolve().parents[2].parent
    / "shared/weights/cifar_resnet/resnet20-12fca82f.th"
)


@pytest.mark.skipif(
    not SHARED_RESNET20.exists(),
    reason="needs ../shared/weights/cifar_resnet: not in a fresh clone",
)
def test_legacy_files_are_read_through_torch_legacy():
    state = sd.load_state_dict(SHARED_RESNET20)  # {'state_dict': {'module.conv1.weight': ...}, ...}
    assert state["conv1.weight"].shape == (16, 3, 3, 3)
    assert all(isinstance(v, np.ndarray) for v in state.values())


def test_non_path_argument_is_a_type_error():
    with pytest.raises(TypeError, match="checkpoint_path"):
        sd.load_state_dict(123)


def test_non_tensor_values_are_rejected(tmp_path):
    path = tmp_path / "a.pt"
    save_torch_zip({"a": np.ones(1, np.float32)}, path)
    _replace_pkl(path, b"\x80\x02}X\x01\x00\x00\x00aK\x01s.")  # {'a': 1}
    with pytest.raises(ValueError, match="does not hold a state dict"):
        sd.load_state_dict(path)


# ---- torch_to_flax -------------------------------------------------------------------------

_TARGET = {
    "params": {
        "conv": {"kernel": jnp.zeros((3, 3, 2, 4))},
        "bn": {"scale": jnp.zeros(4), "bias": jnp.zeros(4)},
        "attn": {"in_proj": {"kernel": jnp.zeros((4, 12)), "bias": jnp.zeros(12)}},
        "emb": jnp.zeros((5, 4)),
    },
    "batch_stats": {"bn": {"mean": jnp.zeros(4), "var": jnp.zeros(4)}},
}


def _torch_dict(rng):
    return {
        "conv.weight": rng.normal(size=(4, 2, 3, 3)).astype(np.float32),
        "bn.weight": rng.normal(size=4).astype(np.float32),
        "bn.bias": rng.normal(size=4).astype(np.float32),
        "bn.running_mean": rng.normal(size=4).astype(np.float32),
        "bn.running_var": rng.uniform(1, 2, size=4).astype(np.float32),
        "bn.num_batches_tracked": np.array(3, np.int64),
        "attn.in_proj_weight": rng.normal(size=(12, 4)).astype(np.float16),
        "attn.in_proj_bias": rng.normal(size=12).astype(np.float32),
        "emb": rng.normal(size=(5, 4)).astype(np.float32),
    }


def test_torch_to_flax_maps_every_key_with_the_right_layout():
    src = _torch_dict(np.random.default_rng(3))
    out = sd.torch_to_flax(src, _TARGET, ignore=lambda k: k.endswith("num_batches_tracked"))
    p, s = out["params"], out["batch_stats"]
    np.testing.assert_array_equal(p["conv"]["kernel"], src["conv.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(
        p["attn"]["in_proj"]["kernel"], src["attn.in_proj_weight"].T.astype(np.float32)
    )
    np.testing.assert_array_equal(p["bn"]["scale"], src["bn.weight"])
    np.testing.assert_array_equal(s["bn"]["var"], src["bn.running_var"])
    np.testing.assert_array_equal(p["emb"], src["emb"])
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(out))


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda d: d.pop("bn.running_var"), r"missing \(1\): bn.running_var \(4,\)"),
        (
            lambda d: d.update(extra=np.zeros(1, np.float32)),
            r"unexpected \(2\): bn.num_batches_tracked; extra",
        ),
        (
            lambda d: d.update({"conv.weight": np.zeros((4, 2, 5, 5), np.float32)}),
            r"conv.weight: expected \(4, 2, 3, 3\), got \(4, 2, 5, 5\)",
        ),
        (lambda d: d.update(emb=np.zeros((5, 4), np.int32)), "emb: expected floating point"),
    ],
)
def test_torch_to_flax_names_every_mismatch(edit, match):
    src = _torch_dict(np.random.default_rng(4))
    edit(src)
    with pytest.raises(sd.StateDictMismatchError, match=match):
        sd.torch_to_flax(src, _TARGET, architecture="toy")


# ---- torch cross-checks --------------------------------------------------------------------


def test_torch_loads_our_files_weights_only(tmp_path):
    arrays = _arrays(np.random.default_rng(5))
    path = tmp_path / "ours.pt"
    save_torch_zip(arrays, path)
    loaded = run_torch("load", tmp_path / "torch", str(path))
    assert list(loaded.pop("__order__")) == list(arrays)
    for k, v in arrays.items():
        np.testing.assert_array_equal(loaded[k], v, err_msg=k)
        assert loaded[k].dtype == v.dtype, k


def test_we_load_files_written_by_torch(tmp_path):
    expected = run_torch("save_tensors", tmp_path)
    expected.pop("torch_version")
    got = sd.load_state_dict(tmp_path / "model.pt")
    assert sorted(got) == sorted(expected)
    for k, v in expected.items():
        np.testing.assert_array_equal(np.asarray(got[k], dtype=v.dtype), v, err_msg=k)


def _peak_bytes(fn) -> int:
    """Peak traced allocation while `fn()` runs (numpy reports its buffers to tracemalloc)."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_zero_stride_tensor_is_refused_before_allocating(tmp_path):
    """One float32 stored, viewed as 8192 x 8192 with zero strides: 256 MB from a tiny file."""
    path = tmp_path / "bomb.pt"
    write_torch_zip_raw({"w": ("0", 0, (8192, 8192), (0, 0))}, {"0": np.zeros(1, np.float32)}, path)
    assert path.stat().st_size < 2000

    def load():
        with pytest.raises(ValueError, match=r"bomb.pt.*declares 67108864 elements.*holds 1"):
            sd.load_state_dict(path)

    assert _peak_bytes(load) < 8 << 20


def test_oversized_pickle_entry_is_refused_unread(tmp_path, monkeypatch):
    path = tmp_path / "a.pt"
    save_torch_zip({"w": np.ones((2, 3), np.float32)}, path)
    monkeypatch.setattr(sd, "MAX_PICKLE_BYTES", 16)
    with pytest.raises(ValueError, match=r"a.pt.*data.pkl declares \d+ bytes.*MAX_PICKLE_BYTES=16"):
        sd.load_state_dict(path)
