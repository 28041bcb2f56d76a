"""ResNet-50 in the torchvision layout (Flax linen, inference only) and its state-dict converter.

The Flax module names mirror torchvision's (`conv1`, `bn1`, `layer1/0/conv1`, `layer1/0/downsample/0`,
..., `fc`), so a torchvision `resnet50().state_dict()` maps onto the variables tree key by key:
conv weights OIHW -> HWIO, BatchNorm weight/bias -> params scale/bias, running_mean/running_var ->
batch_stats mean/var (`num_batches_tracked` is ignored). Blocks are torchvision's v1.5 Bottleneck
(stride on the 3x3 conv). BatchNorm always uses the running statistics: the encoder is frozen.

    encoder = resnet50_encoder('resnet50.pth')
    z = encoder.embed(images_uint8)                                           # [batch, 2048]
    module, variables = load_resnet('resnet50.pth')
    logits = module.apply(variables, encoder.preprocess(images_uint8), logits=True)  # [batch, 1000]

Registered as `get_encoder('resnet50', path='resnet50.pth')` in `dkvb_jax.encoders.registry`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dkvb_jax.encoders import state_dict as sd
from dkvb_jax.encoders._center_crop import IMAGENET_MEAN, IMAGENET_STD, make_preprocess
from dkvb_jax.encoders.registry import Encoder, register_encoder

__all__ = [
    "ResNetConfig",
    "RESNET50",
    "ResNet",
    "convert_resnet",
    "load_resnet",
    "resnet50_encoder",
]


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    """A torchvision Bottleneck ResNet.

    Attributes:
      stage_sizes: blocks per stage (`layer1`, `layer2`, ...); ResNet-50 is (3, 4, 6, 3).
      width: stem channels and the bottleneck width of `layer1` (doubles every stage).
      num_classes: rows of the `fc` layer; 0 for a headless checkpoint without `fc`.
      image_size: input side the preprocessing produces.
    """

    stage_sizes: tuple[int, ...] = (3, 4, 6, 3)
    width: int = 64
    num_classes: int = 1000
    image_size: int = 224

    def __post_init__(self):
        sizes = tuple(self.stage_sizes)
        if not sizes or any(not isinstance(n, int) or n < 1 for n in sizes):
            raise ValueError(
                f"ResNetConfig.stage_sizes must be positive ints, got {self.stage_sizes!r}."
            )
        object.__setattr__(self, "stage_sizes", sizes)
        for name in ("width", "image_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(
                    f"ResNetConfig.{name} must be a positive int, got {getattr(self, name)!r}."
                )
        if not isinstance(self.num_classes, int) or self.num_classes < 0:
            raise ValueError(
                f"ResNetConfig.num_classes must be an int >= 0, got {self.num_classes!r}."
            )

    @property
    def embed_dim(self) -> int:
        """Channels of the pooled embedding: 4 x the last stage's bottleneck width."""
        return self.width * 2 ** (len(self.stage_sizes) - 1) * Bottleneck.expansion


RESNET50 = ResNetConfig()


def _bn(name: str) -> nn.BatchNorm:
    # torch's defaults; statistics are never updated (frozen encoder).
    return nn.BatchNorm(use_running_average=True, momentum=0.9, epsilon=1e-5, name=name)


def _conv(features: int, kernel: int, stride: int, name: str) -> nn.Conv:
    pad = (kernel - 1) // 2  # torch's explicit symmetric padding, not TF "SAME"
    return nn.Conv(
        features,
        (kernel, kernel),
        (stride, stride),
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        name=name,
    )


class _Downsample(nn.Module):
    """torchvision's `downsample = Sequential(conv1x1, BatchNorm)`, named `0` and `1`."""

    features: int
    stride: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return _bn("1")(_conv(self.features, 1, self.stride, "0")(x))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 with a residual; output channels `4 * width`."""

    width: int
    stride: int
    downsample: bool
    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = nn.relu(_bn("bn1")(_conv(self.width, 1, 1, "conv1")(x)))
        y = nn.relu(_bn("bn2")(_conv(self.width, 3, self.stride, "conv2")(y)))
        y = _bn("bn3")(_conv(self.width * self.expansion, 1, 1, "conv3")(y))
        if self.downsample:
            x = _Downsample(self.width * self.expansion, self.stride, name="downsample")(x)
        return nn.relu(y + x)


class _Stage(nn.Module):
    """torchvision's `layerN`: blocks named `0`, `1`, ... ."""

    width: int
    blocks: int
    stride: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.blocks):
            first = i == 0
            # The first block changes the channel count (and maybe the resolution): it needs a
            # projection shortcut, exactly where torchvision puts `downsample`.
            needs_proj = first and (
                self.stride != 1 or x.shape[-1] != self.width * Bottleneck.expansion
            )
            x = Bottleneck(self.width, self.stride if first else 1, needs_proj, name=str(i))(x)
        return x


class ResNet(nn.Module):
    """torchvision Bottleneck ResNet, NHWC, inference-mode BatchNorm.

    `__call__(images)` maps preprocessed `[batch, H, W, 3]` to the pooled `[batch, embed_dim]`;
    with `logits=True` it returns `fc` outputs `[batch, num_classes]` instead.
    """

    config: ResNetConfig = RESNET50

    @nn.compact
    def __call__(self, images: jax.Array, *, logits: bool = False) -> jax.Array:
        c = self.config
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(
                f"images must be [batch, height, width, 3] (NHWC), got shape {images.shape}."
            )
        x = nn.relu(_bn("bn1")(_conv(c.width, 7, 2, "conv1")(images.astype(jnp.float32))))
        x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        for i, blocks in enumerate(c.stage_sizes):
            x = _Stage(c.width * 2**i, blocks, 1 if i == 0 else 2, name=f"layer{i + 1}")(x)
        embedding = jnp.mean(x, axis=(1, 2))
        if logits and not c.num_classes:
            raise ValueError("logits=True needs a classifier: this ResNetConfig has num_classes=0.")
        # Create `fc` at init even when only embeddings are asked for, so the tree is complete.
        if c.num_classes and (logits or self.is_initializing()):
            out = nn.Dense(c.num_classes, name="fc")(embedding)
            if logits:
                return out
        return embedding


def convert_resnet(state_dict: sd.StateDict, config: ResNetConfig = RESNET50) -> dict[str, Any]:
    """Maps a torchvision ResNet state dict onto `ResNet(config)`'s variables, one-to-one.

    Raises:
      StateDictMismatchError: keys missing, unexpected or of the wrong shape for `config`.
    """
    model = ResNet(config)
    target = sd.init_shapes(model, jnp.zeros((1, 32, 32, 3), jnp.float32))
    return sd.torch_to_flax(
        state_dict,
        target,
        ignore=lambda k: k.endswith("num_batches_tracked"),
        architecture=f"ResNet{_depth_name(config)} (torchvision layout, {config})",
    )


def load_resnet(
    checkpoint_path: str | os.PathLike[str], config: ResNetConfig = RESNET50
) -> tuple[ResNet, dict[str, Any]]:
    """Reads a `.safetensors` / `.pt` torchvision ResNet state dict: `(module, variables)`."""
    return ResNet(config), convert_resnet(sd.load_state_dict(checkpoint_path), config)


def resnet50_encoder(
    checkpoint_path: str | os.PathLike[str], *, config: ResNetConfig | None = None
) -> Encoder:
    """The registry factory for torchvision's ImageNet ResNet-50.

    Args:
      checkpoint_path: a torchvision `resnet50` state dict (`.pth` from torchvision's model zoo,
        or `.safetensors`). A headless one (no `fc.*`) loads too.
      config: override the architecture (defaults to ResNet-50); `num_classes` always follows
        the file (0 when it has no `fc`).

    Returns:
      The `Encoder` 'resnet50': `embed` maps `[batch, h, w, 3]` pixels in [0, 255] to
      `[batch, 2048]`; its `preprocess` resizes the shorter side to 224, center-crops 224 and
      applies ImageNet mean/std.
    """
    state = sd.load_state_dict(checkpoint_path)
    fc = state.get("fc.weight")
    config = dataclasses.replace(
        config or RESNET50, num_classes=int(fc.shape[0]) if fc is not None and fc.ndim == 2 else 0
    )
    variables = convert_resnet(state, config)
    preprocess = make_preprocess(config.image_size, IMAGENET_MEAN, IMAGENET_STD, "bilinear")
    return Encoder(
        "resnet50",
        config.image_size,
        config.embed_dim,
        preprocess,
        ResNet(config).apply,
        variables,
        f"torchvision ResNet{_depth_name(config)} (ImageNet); shorter side to "
        f"{config.image_size} (bilinear), center crop, ImageNet mean/std",
    )


def _depth_name(config: ResNetConfig) -> str:
    return f"-{3 * sum(config.stage_sizes) + 2}"


def _registry_factory(
    path: str | os.PathLike[str] | None = None, *, config: ResNetConfig | None = None
):
    """`get_encoder('resnet50', path=...)`: the registry's `path=` convention."""
    if path is None:
        raise ValueError(
            "path: encoder 'resnet50' has no shipped weights; pass path= to "
            "a torchvision resnet50 state dict (e.g. torchvision's resnet50-*.pth, or .safetensors)."
        )
    return resnet50_encoder(path, **({"config": config} if config is not None else {}))


def _register() -> None:
    # The registry imports this module as a plugin; registering here keeps the name next to the
    # code it names.
    register_encoder("resnet50", _registry_factory, trained_on=("imagenet2012/train",))


_register()
