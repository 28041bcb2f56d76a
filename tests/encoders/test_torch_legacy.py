"""Torch-free legacy `torch.save` reader: round trips on files written here, refusal of bad pickles."""

import collections
import io
import pickle
import struct
import tracemalloc

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from encoders_testutil import RESNET_TH, needs_shared
from hypothesis import given, settings
from hypothesis import strategies as st

from dkvb_jax.encoders import torch_legacy

_STORAGE_NAMES = {
    np.dtype("float32"): "FloatStorage",
    np.dtype("float64"): "DoubleStorage",
    np.dtype("float16"): "HalfStorage",
    np.dtype("int64"): "LongStorage",
    np.dtype("int32"): "IntStorage",
    np.dtype("uint8"): "ByteStorage",
    np.dtype("bool"): "BoolStorage",
}


class Global:
    """A global to write into the pickle by name (no torch needed)."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle requires reduce callables to be callable.
        raise AssertionError("never called")


class Storage:
    """Storage bytes `array`; `numel` overrides the element count the file declares."""

    def __init__(self, key, array, numel=None):
        self.key, self.array = key, np.ascontiguousarray(array).reshape(-1)
        self.numel = self.array.size if numel is None else numel


class Tensor:
    """A view `(offset, size, stride)` into a Storage, pickled like torch's `_rebuild_tensor_v2`."""

    def __init__(self, storage, offset, size, stride, v2=True):
        self.storage, self.offset, self.size, self.stride, self.v2 = (
            storage,
            offset,
            size,
            stride,
            v2,
        )

    def __reduce__(self):
        if self.v2:
            return (
                Global("torch._utils", "_rebuild_tensor_v2"),
                (
                    self.storage,
                    self.offset,
                    self.size,
                    self.stride,
                    False,
                    collections.OrderedDict(),
                ),
            )
        return (
            Global("torch._utils", "_rebuild_tensor"),
            (self.storage, self.offset, self.size, self.stride),
        )


class LegacyPickler(pickle._Pickler):  # The Python pickler lets `save` write raw GLOBALs.
    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, Global):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
            return
        super().save(obj, save_persistent_id)

    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            name = _STORAGE_NAMES[obj.array.dtype]
            return ("storage", Global("torch", name), obj.key, "cpu", obj.numel, None)
        return None


def write_legacy(obj, storages, sys_info=None) -> bytes:
    """Writes `obj` in torch's legacy format; `storages` are the Storage objects it refers to."""
    f = io.BytesIO()
    for header in (
        torch_legacy.MAGIC_NUMBER,
        torch_legacy.PROTOCOL_VERSION,
        sys_info
        or {
            "protocol_version": 1001,
            "little_endian": True,
            "type_sizes": {"short": 2, "int": 4, "long": 8},
        },
    ):
        pickle.dump(header, f, protocol=2)
    LegacyPickler(f, protocol=2).dump(obj)
    keys = sorted(s.key for s in storages)
    pickle.dump(keys, f, protocol=2)
    for s in sorted(storages, key=lambda s: s.key):
        f.write(struct.pack("<q", s.numel))
        f.write(s.array.astype(s.array.dtype.newbyteorder("<")).tobytes())
    return f.getvalue()


def tensor_of(array, key, v2=True):
    s = Storage(key, array)
    strides = tuple(int(x) // array.itemsize for x in array.copy(order="C").strides)
    return Tensor(s, 0, tuple(array.shape), strides, v2), s


def sample_checkpoint():
    """A DataParallel-style checkpoint with shared storage, a transposed view and an offset."""
    base = np.arange(24, dtype=np.float32)
    s = Storage("100", base)
    w, s_w = tensor_of(np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3), "7")
    idx, s_i = tensor_of(np.array([3, -2], np.int64), "9", v2=False)
    state = collections.OrderedDict(
        [
            ("module.a", w),
            ("module.view", Tensor(s, 2, (3, 4), (1, 3))),  # transposed view at offset 2
            ("module.row", Tensor(s, 20, (4,), (1,))),
            ("module.idx", idx),
            ("module.scalar", Tensor(s, 5, (), ())),
        ]
    )
    expected = {
        "module.a": np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3),
        "module.view": base[2:].copy()[np.arange(3)[:, None] + 3 * np.arange(4)[None]],
        "module.row": base[20:24],
        "module.idx": np.array([3, -2]),
        "module.scalar": np.float32(5),
    }
    return {"state_dict": state, "best_prec1": 91.5, "arch": "toy"}, [s, s_w, s_i], expected


def test_round_trip_of_hand_written_checkpoint():
    obj, storages, expected = sample_checkpoint()
    got = torch_legacy.load_legacy(io.BytesIO(write_legacy(obj, storages)))
    assert got["best_prec1"] == 91.5 and got["arch"] == "toy"
    assert isinstance(got["state_dict"], collections.OrderedDict)
    assert list(got["state_dict"]) == list(expected)
    for k, v in expected.items():
        assert got["state_dict"][k].dtype == np.asarray(v).dtype, k
        np.testing.assert_array_equal(got["state_dict"][k], v, err_msg=k)


@settings(max_examples=25, deadline=None)
@given(
    array=hnp.arrays(
        st.sampled_from(sorted(_STORAGE_NAMES, key=str)),
        hnp.array_shapes(min_dims=0, max_dims=4, max_side=4),
    ),
    offset=st.integers(0, 3),
)
def test_round_trip_property(array, offset):
    """Any dtype/shape at any storage offset comes back bit-exact."""
    flat = np.concatenate([np.zeros(offset, array.dtype), array.reshape(-1)])
    s = Storage("k", flat)
    strides = tuple(int(x) // array.itemsize for x in array.copy(order="C").strides)
    t = Tensor(s, offset, tuple(array.shape), strides)
    got = torch_legacy.load_legacy(io.BytesIO(write_legacy({"t": t}, [s])))["t"]
    assert got.dtype == array.dtype and got.shape == array.shape
    np.testing.assert_array_equal(got.reshape(-1).view(np.uint8), array.reshape(-1).view(np.uint8))


class Evil:
    def __init__(self, module, name, *args):
        self.g, self.args = Global(module, name), args

    def __reduce__(self):
        return self.g, self.args


@pytest.mark.parametrize(
    "module, name, args",
    [
        ("os", "system", ("echo pwned",)),
        ("posix", "system", ("echo pwned",)),
        ("builtins", "eval", ("1 + 1",)),
        ("subprocess", "Popen", (["true"],)),
        ("torch.nn.modules.conv", "Conv2d", (3, 3, 3)),
        ("numpy.core.multiarray", "_reconstruct", ()),
    ],
)
def test_malicious_globals_are_refused(module, name, args):
    data = write_legacy({"state_dict": {"x": Evil(module, name, *args)}}, [])
    with pytest.raises(
        torch_legacy.UnsafePickleError, match=f"refusing to unpickle global {module}.{name}"
    ):
        torch_legacy.load_legacy(io.BytesIO(data))


def test_malicious_header_is_refused():
    """Even the magic-number pickle goes through the restricted unpickler."""
    f = io.BytesIO()
    LegacyPickler(f, protocol=2).dump(Evil("os", "system", "echo pwned"))
    with pytest.raises(torch_legacy.UnsafePickleError, match="refusing.*os.system"):
        torch_legacy.load_legacy(io.BytesIO(f.getvalue()))


def test_setting_state_on_an_allowed_global_is_refused():
    """BUILD on anything but an OrderedDict is refused, as in the zip reader: a file must not
    set attributes on the reader's own stand-ins (here the `_rebuild_tensor_v2` function)."""
    f = io.BytesIO()
    for header in (
        torch_legacy.MAGIC_NUMBER,
        torch_legacy.PROTOCOL_VERSION,
        {"little_endian": True},
    ):
        pickle.dump(header, f, protocol=2)
    # GLOBAL torch._utils._rebuild_tensor_v2, EMPTY_DICT, 'planted' -> 1 SETITEM, BUILD, STOP.
    f.write(b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n}X\x07\x00\x00\x00plantedK\x01sb.")
    pickle.dump([], f, protocol=2)
    with pytest.raises(ValueError, match="refusing to set state on a function"):
        torch_legacy.load_legacy(io.BytesIO(f.getvalue()))
    from dkvb_jax.encoders import _torch_pickle

    assert not hasattr(_torch_pickle._rebuild_tensor_v2, "planted")


def _cut(data: bytes, n: int) -> io.BytesIO:
    return io.BytesIO(data[:n])


@pytest.mark.parametrize("where", [0.2, 0.6, 0.97, 0.999])
def test_truncated_file(where):
    obj, storages, _ = sample_checkpoint()
    data = write_legacy(obj, storages)
    with pytest.raises(ValueError, match="truncated|ends early|cut short"):
        torch_legacy.load_legacy(_cut(data, int(len(data) * where)))


@pytest.mark.parametrize(
    "data, match",
    [
        (pickle.dumps(12345, protocol=2), "bad magic number"),
        (b"PK\x03\x04" + b"\0" * 30, "zip-based"),
        (b"", "ends early"),
    ],
)
def test_not_legacy(data, match):
    with pytest.raises(ValueError, match=match):
        torch_legacy.load_legacy(io.BytesIO(data))


def test_storage_count_and_bounds_are_checked():
    s = Storage("k", np.arange(4, dtype=np.float32))
    data = write_legacy({"t": Tensor(s, 2, (4,), (1,))}, [s])  # Reads past the 4 elements.
    with pytest.raises(ValueError, match="runs past its storage"):
        torch_legacy.load_legacy(io.BytesIO(data))
    big_endian = write_legacy({}, [], sys_info={"little_endian": False})
    with pytest.raises(ValueError, match="little-endian"):
        torch_legacy.load_legacy(io.BytesIO(big_endian))


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no file"):
        torch_legacy.load_legacy(tmp_path / "absent.th")


@needs_shared(RESNET_TH[20])
def test_reads_real_checkpoint():
    obj = torch_legacy.load_legacy(RESNET_TH[20])
    assert obj["best_prec1"] == pytest.approx(91.78, abs=0.01)
    sd = obj["state_dict"]
    assert len(sd) == 97 and all(k.startswith("module.") for k in sd)
    assert sd["module.conv1.weight"].shape == (16, 3, 3, 3)
    assert sd["module.linear.weight"].dtype == np.float32


@pytest.mark.parametrize(
    "size, stride, numel, match",
    [
        ((8192, 8192), (0, 0), None, "declares 67108864 elements but its storage holds 1"),
        ((4, 4), (4, 1), 1 << 40, r"declares 1099511627776 elements .* only 4 bytes are left"),
    ],
    ids=["zero strides expand 4 bytes to 256 MB", "storage header claims 4 TB"],
)
def test_tensor_larger_than_its_storage_is_refused_before_allocating(size, stride, numel, match):
    s = Storage("k", np.zeros(1, np.float32), numel=numel)
    data = write_legacy({"t": Tensor(s, 0, size, stride)}, [s])
    assert len(data) < 400
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=match):
            torch_legacy.load_legacy(io.BytesIO(data))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak
