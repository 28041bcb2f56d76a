"""CIFAR-10 ResNet-20/32/44/56/110 (He et al. 2016, "option A" shortcuts) in Flax.

Layout and weights of akamaster/pytorch_resnet_cifar10 (BSD-2-Clause): `conv1, bn1`, three stages
`layer1..3` of `depth // 6` basic blocks with 16/32/64 channels, global average pool (the 64-d
embedding) and a 10-way `linear` classifier. Option A shortcuts subsample `x[:, ::2, ::2]` and
zero-pad the channels by `planes // 4` on both sides, so they have no weights. Batch norm runs in
inference mode. ResNet-20 weights are shipped in `dkvb_jax/assets/cifar_resnet20.npz`; the others
load from the original legacy `.th` files via `torch_legacy`.
"""

from __future__ import annotations

import functools
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dkvb_jax.encoders import _images, _weights, torch_legacy

INPUT_SIZE = 32
EMBED_DIM = 64
NUM_CLASSES = 10
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SHIPPED = {20: "cifar_resnet20.npz"}
_STAGES = ((16, 1), (32, 2), (64, 2))

_conv3x3 = functools.partial(nn.Conv, kernel_size=(3, 3), padding=((1, 1), (1, 1)), use_bias=False)
# PyTorch BatchNorm2d defaults; inference only, so the running statistics are used.
_bn = functools.partial(nn.BatchNorm, use_running_average=True, epsilon=1e-5)


class BasicBlock(nn.Module):
    """conv-bn-relu-conv-bn plus the option A shortcut, then relu."""

    planes: int
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = nn.relu(_bn(name="bn1")(_conv3x3(self.planes, strides=self.stride, name="conv1")(x)))
        y = _bn(name="bn2")(_conv3x3(self.planes, name="conv2")(y))
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.planes:
            pad = self.planes // 4
            shortcut = jnp.pad(x[:, ::2, ::2, :], ((0, 0), (0, 0), (0, 0), (pad, pad)))
        return nn.relu(y + shortcut)


class CifarResNet(nn.Module):
    """CIFAR ResNet of depth 6n+2.

    Takes normalised images `[batch, 32, 32, 3]` (see `preprocess`); returns the pooled feature
    `[batch, 64]`, or the classifier logits `[batch, 10]` with `return_logits=True`.
    """

    depth: int = 20
    num_classes: int = NUM_CLASSES

    def __post_init__(self):
        if self.depth < 8 or (self.depth - 2) % 6:
            raise ValueError(f"depth: expected 6n + 2 (20, 32, 44, 56, 110), got {self.depth}.")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, return_logits: bool = False) -> jax.Array:
        x = nn.relu(_bn(name="bn1")(_conv3x3(16, name="conv1")(x)))
        for s, (planes, stride) in enumerate(_STAGES, start=1):
            for b in range((self.depth - 2) // 6):
                x = BasicBlock(planes, stride if b == 0 else 1, name=f"layer{s}_{b}")(x)
        features = jnp.mean(x, axis=(1, 2))
        # The classifier always runs so that `init` creates its parameters.
        logits = nn.Dense(self.num_classes, name="linear")(features)
        return logits if return_logits else features


def preprocess(images: Any) -> jax.Array:
    """uint8/float RGB `[batch, h, w, 3]` in [0, 255] -> normalised `[batch, 32, 32, 3]`.

    Resizes bilinearly to 32 if needed, scales to [0, 1] and normalises with `MEAN`/`STD`.
    """
    _images.check_images(images)
    x = _images.resize_to(_images.as_float(images), INPUT_SIZE) / 255.0
    return (x - jnp.asarray(MEAN)) / jnp.asarray(STD)


def variable_shapes(depth: int) -> dict[str, Any]:
    """The expected `{'params', 'batch_stats'}` tree as `jax.ShapeDtypeStruct` leaves."""
    return jax.eval_shape(
        CifarResNet(depth).init,
        jax.random.key(0),
        jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32),
    )


def _flax_key(torch_name: str) -> tuple[str, str, Any]:
    """PyTorch name -> (collection, 'module/path/leaf', transform)."""
    *path, leaf = torch_name.split(".")
    if len(path) >= 2 and path[0].startswith("layer"):
        path = [f"{path[0]}_{path[1]}"] + path[2:]
    module = "/".join(path)
    kind = path[-1].rstrip("0123456789") if path else ""
    if kind == "conv" and leaf == "weight":
        return "params", f"{module}/kernel", lambda w: np.transpose(w, (2, 3, 1, 0))  # OIHW->HWIO
    if kind == "linear" and leaf in ("weight", "bias"):
        return "params", f"{module}/{'kernel' if leaf == 'weight' else 'bias'}", np.transpose
    bn_leaves = {
        "weight": ("params", "scale"),
        "bias": ("params", "bias"),
        "running_mean": ("batch_stats", "mean"),
        "running_var": ("batch_stats", "var"),
    }
    if kind != "bn" or leaf not in bn_leaves:
        raise KeyError(torch_name)
    collection, flax_leaf = bn_leaves[leaf]
    return collection, f"{module}/{flax_leaf}", lambda w: w


def variables_from_state_dict(state_dict: Mapping[str, Any], depth: int) -> dict[str, Any]:
    """Maps an akamaster CIFAR ResNet state dict one-to-one onto the Flax variables.

    Args:
      state_dict: PyTorch names (an optional `module.` prefix from DataParallel is stripped;
        `num_batches_tracked` counters are dropped) to arrays.
      depth: the network depth the weights are for.

    Returns:
      `{'params': ..., 'batch_stats': ...}` for `CifarResNet(depth)`.

    Raises:
      ValueError: names that do not map, or missing, extra or mis-shaped tensors.
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            f"state_dict: expected a mapping of names to arrays, got {type(state_dict).__name__}."
        )
    flat: dict[str, np.ndarray] = {}
    unknown = []
    for name, value in state_dict.items():
        name = name.removeprefix("module.")
        if name.endswith("num_batches_tracked"):
            continue
        try:
            collection, key, transform = _flax_key(name)
        except KeyError:
            unknown.append(name)
            continue
        flat[f"{collection}/{key}"] = transform(np.asarray(value, np.float32))
    if unknown:
        raise ValueError(
            f"state_dict: names with no CIFAR ResNet counterpart: {unknown[:8]}; is this "
            "an akamaster CIFAR ResNet checkpoint?"
        )
    variables = _weights.unflatten(flat)
    _weights.check_tree_shapes(
        variables, variable_shapes(depth), what=f"CIFAR ResNet-{depth} weights"
    )
    return jax.tree.map(jnp.asarray, variables)


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Reads a state dict from a legacy `.th`/`.pth` checkpoint or an `.npz` of named arrays."""
    path = pathlib.Path(path)
    if path.suffix == ".npz":
        return _weights.load_npz(path, what="CIFAR ResNet weights")
    obj = torch_legacy.load_legacy(path)
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"path: {str(path)!r} holds a {type(obj).__name__}, not a state dict.")
    return dict(obj)


def load_cifar_resnet(
    depth: int = 20,
    path: str | os.PathLike[str] | None = None,
) -> tuple[CifarResNet, dict[str, Any]]:
    """Loads a CIFAR-10 ResNet with trained weights.

    Args:
      depth: 20, 32, 44, 56 or 110.
      path: None for the shipped weights (ResNet-20 only); else a legacy `.th` checkpoint from
        akamaster/pytorch_resnet_cifar10 or an `.npz` written by `save_npz`.

    Returns:
      `(module, variables)`; `module.apply(variables, preprocess(images))` is `[batch, 64]`.
    """
    module = CifarResNet(depth)
    if path is None:
        if depth not in SHIPPED:
            raise ValueError(
                f"path: no weights for ResNet-{depth} are shipped (only depths "
                f"{sorted(SHIPPED)}); pass path= to its .th checkpoint, e.g. "
                f"../shared/weights/cifar_resnet/resnet{depth}-*.th."
            )
        path = _weights.asset_path(SHIPPED[depth])
    return module, variables_from_state_dict(read_state_dict(path), depth)


def save_npz(path_in: str | os.PathLike[str], path_out: str | os.PathLike[str]) -> None:
    """Converts a legacy `.th` checkpoint to the compact `.npz` read by `load_cifar_resnet`."""
    state = {
        k.removeprefix("module."): np.asarray(v, np.float32)
        for k, v in read_state_dict(path_in).items()
        if not k.endswith("num_batches_tracked")
    }
    np.savez_compressed(path_out, **state)
