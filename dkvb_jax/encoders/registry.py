"""Frozen encoders by name: `get_encoder('mobilenet_v1').embed(images_uint8) -> [batch, 1024]`.

An `Encoder` bundles a preprocessing function (uint8 RGB images -> model input), a pure apply
function and its variables. `embed` validates the images, runs the jitted
`apply(variables, preprocess(images))` over fixed-size batches (padding the last one, so one
compilation serves a whole dataset) and returns float32 NumPy embeddings.

Built-in names: 'mobilenet_v1' (default, weights shipped), 'cifar_resnet20' (shipped),
'cifar_resnet56' (needs `path=`); other modules add names with `register_encoder`. Any Flax
module + variables (`encoder_from_module`) or plain function (`encoder_from_function`) works too.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dkvb_jax.encoders import _images
from dkvb_jax.provenance import Part, Rows

DEFAULT_ENCODER = "mobilenet_v1"

# Modules that register further encoders when imported (absent ones are skipped).
_PLUGIN_MODULES = ("dkvb_jax.encoders.resnet50", "dkvb_jax.encoders.clip")

Factory = Callable[..., Any]
_FACTORIES: dict[str, Factory] = {}
# What each encoder's weights were trained on, as row namespaces (see dkvb_jax.provenance).
_TRAINED_ON: dict[str, tuple[str, ...]] = {}


@dataclasses.dataclass(frozen=True, eq=False)
class Encoder:
    """A frozen image encoder.

    Attributes:
      name: registry name or a user label; part of embedding-cache keys.
      input_size: side length of the square model input after `preprocess` (None if free).
      embed_dim: size of the embedding.
      preprocess: uint8/float RGB `[batch, h, w, 3]` in [0, 255] -> model input (jit-able).
      apply_fn: `(variables, model_input) -> [batch, embed_dim]`, pure and jit-able.
      variables: the frozen weights passed to `apply_fn` (None for a plain function).
      description: free text (normalisation, source of the weights) for logs and cache metadata.
    """

    name: str
    input_size: int | None
    embed_dim: int
    preprocess: Callable[[Any], jax.Array]
    apply_fn: Callable[[Any, jax.Array], jax.Array]
    variables: Any = None
    description: str = ""

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name: expected a non-empty string, got {self.name!r}.")
        if not (isinstance(self.embed_dim, int) and self.embed_dim > 0):
            raise ValueError(f"embed_dim: expected a positive int, got {self.embed_dim!r}.")
        if self.input_size is not None and not (
            isinstance(self.input_size, int) and self.input_size > 0
        ):
            raise ValueError(
                f"input_size: expected a positive int or None, got {self.input_size!r}."
            )
        for field in ("preprocess", "apply_fn"):
            if not callable(getattr(self, field)):
                raise TypeError(
                    f"{field}: expected a callable, got {type(getattr(self, field)).__name__}."
                )
        preprocess, apply_fn = self.preprocess, self.apply_fn

        def forward(variables, images):
            return apply_fn(variables, preprocess(images)).astype(jnp.float32)

        object.__setattr__(self, "_forward", jax.jit(forward))

    def embed(self, images: Any, *, batch_size: int = 256) -> np.ndarray:
        """Embeds RGB images.

        Args:
          images: uint8 (or float in [0, 255]) `[batch, h, w, 3]`.
          batch_size: images per jitted call; the last chunk is zero-padded to this size so that
            every call reuses one compilation.

        Returns:
          float32 `[batch, embed_dim]`.
        """
        if not (isinstance(batch_size, int) and batch_size > 0):
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}.")
        _images.check_images(images)
        images = np.asarray(images)
        n = images.shape[0]
        if n == 0:
            return np.zeros((0, self.embed_dim), np.float32)
        size = min(batch_size, n)
        out = []
        for start in range(0, n, size):
            chunk = images[start : start + size]
            pad = size - chunk.shape[0]
            if pad:
                chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
            out.append(np.asarray(self._forward(self.variables, chunk))[: size - pad])
        emb = np.concatenate(out)
        if emb.shape != (n, self.embed_dim):
            raise ValueError(
                f"encoder {self.name!r}: produced shape {emb.shape}, expected "
                f"{(n, self.embed_dim)}; check embed_dim."
            )
        return emb

    def __call__(self, images: Any) -> jax.Array:
        """Jit-able embedding of one batch (no host round trip, no padding)."""
        _images.check_images(images)
        return self._forward(self.variables, images)


def _default_preprocess(input_size: int | None) -> Callable[[Any], jax.Array]:
    def preprocess(images):
        _images.check_images(images)
        x = _images.as_float(images)
        if input_size is not None:
            x = _images.resize_to(x, input_size)
        return x / 255.0

    return preprocess


def _infer_dim(apply_fn, variables, preprocess, input_size: int | None) -> int:
    side = input_size or 32
    out = jax.eval_shape(
        lambda v, x: apply_fn(v, preprocess(x)),
        variables,
        jax.ShapeDtypeStruct((2, side, side, 3), jnp.uint8),
    )
    if len(out.shape) != 2 or out.shape[0] != 2:
        raise ValueError(
            f"the encoder must return [batch, embed_dim], got shape {out.shape} for a "
            f"batch of 2 images of {side}x{side}."
        )
    return int(out.shape[1])


def encoder_from_module(
    module: Any,
    variables: Any,
    *,
    name: str,
    input_size: int | None = None,
    preprocess: Callable[[Any], jax.Array] | None = None,
    embed_dim: int | None = None,
    method: Any = None,
    description: str = "",
) -> Encoder:
    """Wraps any Flax module and its variables as an `Encoder`.

    Args:
      module: a `flax.linen.Module` whose `apply(variables, x)` returns `[batch, embed_dim]`.
      variables: its frozen variables.
      name: label used in logs and cache keys.
      input_size: square side the module expects (images are resized to it by the default
        preprocessing, which also scales pixels to [0, 1]).
      preprocess: replaces the default preprocessing.
      embed_dim: inferred with `jax.eval_shape` when None.
      method: optional module method to apply instead of `__call__`.
      description: free text.
    """
    if not hasattr(module, "apply"):
        raise TypeError(f"module: expected a flax.linen.Module, got {type(module).__name__}.")
    preprocess = preprocess or _default_preprocess(input_size)

    def apply_fn(v, x):
        return module.apply(v, x, method=method) if method is not None else module.apply(v, x)

    if embed_dim is None:
        embed_dim = _infer_dim(apply_fn, variables, preprocess, input_size)
    return Encoder(name, input_size, embed_dim, preprocess, apply_fn, variables, description)


def encoder_from_function(
    fn: Callable[[jax.Array], jax.Array],
    *,
    name: str,
    input_size: int | None = None,
    preprocess: Callable[[Any], jax.Array] | None = None,
    embed_dim: int | None = None,
    description: str = "",
) -> Encoder:
    """Wraps a jit-able function `model_input -> [batch, embed_dim]` as an `Encoder`."""
    if not callable(fn):
        raise TypeError(f"fn: expected a callable, got {type(fn).__name__}.")
    preprocess = preprocess or _default_preprocess(input_size)
    apply_fn = lambda _, x: fn(x)
    if embed_dim is None:
        embed_dim = _infer_dim(apply_fn, None, preprocess, input_size)
    return Encoder(name, input_size, embed_dim, preprocess, apply_fn, None, description)


def register_encoder(
    name: str,
    factory: Factory,
    *,
    overwrite: bool = False,
    trained_on: Sequence[str] | None = None,
) -> None:
    """Registers `factory(**kwargs) -> Encoder` under `name`.

    Args:
      name: the registry name.
      factory: builds the `Encoder` (e.g. with `encoder_from_module`); `get_encoder(name,
        **kwargs)` calls it.
      overwrite: replace an existing registration.
      trained_on: the datasets its weights were trained on, as ``"<dataset>/<split>"`` row
        namespaces (e.g. ``("imagenet2012/train",)``); ``()`` for an encoder trained on no data.
        Unlearning certificates need it: a removal from a dataset the encoder was trained on is
        never certified, and an encoder registered without it certifies nothing.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name: expected a non-empty string, got {name!r}.")
    if not callable(factory):
        raise TypeError(f"factory: expected a callable, got {type(factory).__name__}.")
    if name in _FACTORIES and not overwrite and _FACTORIES[name] is not factory:
        raise ValueError(f"name: encoder {name!r} is already registered; pass overwrite=True.")
    if trained_on is not None:
        if isinstance(trained_on, str) or not all(isinstance(t, str) and t for t in trained_on):
            raise TypeError(
                f"trained_on: expected a sequence of dataset names, got {trained_on!r}."
            )
        _TRAINED_ON[name] = tuple(trained_on)
    else:
        _TRAINED_ON.pop(name, None)
    _FACTORIES[name] = factory


def encoder_provenance(name: str | None) -> Part:
    """The provenance :class:`~dkvb_jax.provenance.Part` of a registered encoder's weights.

    Unregistered names, and encoders registered without ``trained_on``, give a part whose data
    is not recorded (no removal is then certified).
    """
    _load_plugins()
    trained_on = _TRAINED_ON.get(name) if name is not None else None
    if trained_on is None:
        return Part("encoder", f"pretrained {name or 'unknown encoder'}", None)
    return Part("encoder", f"pretrained {name}", tuple(Rows(t, labels=True) for t in trained_on))


def _load_plugins() -> None:
    for module in _PLUGIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:  # A missing dependency inside an existing module is a real error.
                raise


def list_encoders() -> list[str]:
    """Sorted registered names."""
    _load_plugins()
    return sorted(_FACTORIES)


def get_encoder(name: str | Encoder = DEFAULT_ENCODER, **kwargs: Any) -> Encoder:
    """Builds a registered encoder.

    Args:
      name: a registered name (see `list_encoders`), or an `Encoder`, returned unchanged.
      **kwargs: passed to the factory, e.g. `path=` for 'cifar_resnet56'.
    """
    if isinstance(name, Encoder):
        return name
    if not isinstance(name, str):
        raise TypeError(
            f"name: expected an encoder name or Encoder, got {type(name).__name__}; "
            "wrap a Flax module with encoder_from_module or a function with "
            "encoder_from_function."
        )
    _load_plugins()
    if name not in _FACTORIES:
        raise ValueError(f"name: unknown encoder {name!r}; known encoders: {sorted(_FACTORIES)}.")
    built = _FACTORIES[name](**kwargs)
    if not isinstance(built, Encoder):
        raise TypeError(
            f"encoder factory for {name!r} returned {type(built).__name__}; expected an "
            "Encoder: wrap a Flax module and its variables with encoder_from_module, or a "
            "function with encoder_from_function."
        )
    return built


# Built-in encoders. Factories import lazily so `import dkvb_jax` stays cheap.


def _mobilenet_v1(
    path: str | os.PathLike[str] | None = None, emulate_quantization: bool = False
) -> Encoder:
    from dkvb_jax.encoders import mobilenet_v1 as mb

    module, variables = mb.load_mobilenet_v1(path, emulate_quantization=emulate_quantization)
    return Encoder(
        "mobilenet_v1",
        mb.INPUT_SIZE,
        mb.EMBED_DIM,
        mb.preprocess,
        module.apply,
        variables,
        "MobileNetV1 1.0 ImageNet (TFLite uint8 weights, dequantised); "
        "bilinear resize to 224, (x - 128) / 128",
    )


def _cifar_resnet(depth: int) -> Factory:
    def factory(path: str | os.PathLike[str] | None = None) -> Encoder:
        from dkvb_jax.encoders import cifar_resnet as cr

        if path is None and depth not in cr.SHIPPED:
            raise ValueError(
                f"path: 'cifar_resnet{depth}' needs its weights file, e.g. "
                f"get_encoder('cifar_resnet{depth}', path='../shared/weights/"
                f"cifar_resnet/resnet{depth}-<hash>.th')."
            )
        module, variables = cr.load_cifar_resnet(depth, path)
        return Encoder(
            f"cifar_resnet{depth}",
            cr.INPUT_SIZE,
            cr.EMBED_DIM,
            cr.preprocess,
            module.apply,
            variables,
            f"CIFAR-10 ResNet-{depth} (akamaster, option A); 32x32, /255, "
            f"mean {cr.MEAN} std {cr.STD}",
        )

    return factory


register_encoder("mobilenet_v1", _mobilenet_v1, trained_on=("imagenet2012/train",))
# The shipped CIFAR ResNets were trained on CIFAR-10's training labels: removing CIFAR-10
# training rows from a model on their embeddings can never be certified.
register_encoder("cifar_resnet20", _cifar_resnet(20), trained_on=("cifar10/train",))
register_encoder("cifar_resnet56", _cifar_resnet(56), trained_on=("cifar10/train",))
