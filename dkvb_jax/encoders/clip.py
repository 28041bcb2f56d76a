"""CLIP's ViT image tower (OpenAI / open_clip layout) in Flax linen, and its state-dict converter.

Supported checkpoints: state dicts whose image-tower keys are OpenAI's `visual.*` names
(`visual.conv1.weight`, `visual.class_embedding`, `visual.positional_embedding`, `visual.ln_pre`,
`visual.transformer.resblocks.N.{ln_1, attn.in_proj_weight, attn.in_proj_bias, attn.out_proj,
ln_2, mlp.c_fc, mlp.c_proj}`, `visual.ln_post`, `visual.proj`), as saved from
`clip.load(...)[0].state_dict()` or from open_clip's `ViT-B-32` (its `open_clip_model.safetensors`
/ `open_clip_pytorch_model.bin` use the same names). The text tower's keys are ignored; a dict of
the visual tower alone (keys without the `visual.` prefix) loads too.

Not supported: OpenAI's original TorchScript `.pt` archives (export their `state_dict()` once with
torch), Hugging Face `transformers` `CLIPVisionModel` names (`vision_model.*`), and open_clip
variants with extra parts (attention pooling, patch dropout, `ls_1` layer scale): those fail with
the list of unexpected keys.

    encoder = clip_vit_b32_encoder('ViT-B-32.safetensors')
    z = encoder.embed(images_uint8)   # [batch, 512]

Registered as `get_encoder('clip_vit_b32', path=...)` in `dkvb_jax.encoders.registry`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dkvb_jax.encoders import state_dict as sd
from dkvb_jax.encoders._center_crop import CLIP_MEAN, CLIP_STD, make_preprocess
from dkvb_jax.encoders.registry import Encoder, register_encoder

__all__ = [
    "CLIPVisionConfig",
    "CLIP_VIT_B32",
    "CLIPVisionTransformer",
    "convert_clip_visual",
    "load_clip_visual",
    "clip_vit_b32_encoder",
]


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
    """CLIP's `VisionTransformer`.

    Attributes:
      image_size: input side in pixels.
      patch_size: side of the square patches (stride of `conv1`).
      width: token dimension.
      layers: residual attention blocks.
      heads: attention heads (must divide `width`).
      output_dim: columns of `proj`, the embedding dimension.
      mlp_ratio: hidden size of the MLP as a multiple of `width`.
    """

    image_size: int = 224
    patch_size: int = 32
    width: int = 768
    layers: int = 12
    heads: int = 12
    output_dim: int = 512
    mlp_ratio: int = 4

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"CLIPVisionConfig.{f.name} must be a positive int, got {v!r}.")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"CLIPVisionConfig.image_size ({self.image_size}) must be a multiple of "
                f"patch_size ({self.patch_size})."
            )
        if self.width % self.heads:
            raise ValueError(
                f"CLIPVisionConfig.heads ({self.heads}) must divide width ({self.width})."
            )

    @property
    def tokens(self) -> int:
        """Patches plus the class token."""
        return (self.image_size // self.patch_size) ** 2 + 1


CLIP_VIT_B32 = CLIPVisionConfig()


def quick_gelu(x: jax.Array) -> jax.Array:
    """OpenAI CLIP's activation, `x * sigmoid(1.702 x)` (not the erf GELU)."""
    return x * jax.nn.sigmoid(1.702 * x)


def _ln(name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=1e-5, name=name)  # torch's default eps, not Flax's 1e-6


class _Attention(nn.Module):
    """`nn.MultiheadAttention` with packed q/k/v projection `in_proj` and `out_proj`."""

    heads: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, w = x.shape
        qkv = nn.Dense(3 * w, name="in_proj")(x).reshape(b, t, 3, self.heads, w // self.heads)
        out = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
        return nn.Dense(w, name="out_proj")(out.reshape(b, t, w))


class _MLP(nn.Module):
    hidden: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = quick_gelu(nn.Dense(self.hidden, name="c_fc")(x))
        return nn.Dense(x.shape[-1], name="c_proj")(y)


class _ResidualAttentionBlock(nn.Module):
    heads: int
    mlp_ratio: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + _Attention(self.heads, name="attn")(_ln("ln_1")(x))
        return x + _MLP(x.shape[-1] * self.mlp_ratio, name="mlp")(_ln("ln_2")(x))


class _ResBlocks(nn.Module):
    """`transformer.resblocks`: blocks named `0`, `1`, ... as in torch's `nn.Sequential`."""

    layers: int
    heads: int
    mlp_ratio: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.layers):
            x = _ResidualAttentionBlock(self.heads, self.mlp_ratio, name=str(i))(x)
        return x


class _Transformer(nn.Module):
    config: CLIPVisionConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        return _ResBlocks(c.layers, c.heads, c.mlp_ratio, name="resblocks")(x)


class CLIPVisionTransformer(nn.Module):
    """CLIP's image tower: preprocessed `[batch, S, S, 3]` -> embedding `[batch, output_dim]`.

    The embedding is `ln_post(class token) @ proj`, unnormalised, as `CLIP.encode_image` returns
    it; L2-normalise it downstream if cosine geometry is wanted.
    """

    config: CLIPVisionConfig = CLIP_VIT_B32

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        c = self.config
        if images.ndim != 4 or images.shape[1:] != (c.image_size, c.image_size, 3):
            raise ValueError(
                f"images must be [batch, {c.image_size}, {c.image_size}, 3] (NHWC, preprocessed), "
                f"got shape {images.shape}; apply the encoder's preprocess_fn first."
            )
        scale = c.width**-0.5
        x = nn.Conv(
            c.width,
            (c.patch_size,) * 2,
            (c.patch_size,) * 2,
            padding="VALID",
            use_bias=False,
            name="conv1",
        )(images.astype(jnp.float32))
        x = x.reshape(x.shape[0], -1, c.width)  # row-major patches, as torch's flatten of NCHW
        cls = self.param("class_embedding", nn.initializers.normal(scale), (c.width,))
        pos = self.param("positional_embedding", nn.initializers.normal(scale), (c.tokens, c.width))
        x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, c.width)), x], axis=1) + pos
        x = _Transformer(c, name="transformer")(_ln("ln_pre")(x))
        proj = self.param("proj", nn.initializers.normal(scale), (c.width, c.output_dim))
        return _ln("ln_post")(x[:, 0]) @ proj


def _split_prefix(state_dict: sd.StateDict) -> str:
    """'visual.' for a full CLIP state dict, '' for a visual-tower-only one."""
    if any(k.startswith("visual.") for k in state_dict):
        return "visual."
    if "class_embedding" in state_dict or "conv1.weight" in state_dict:
        return ""
    hint = ""
    if any(k.startswith(("vision_model.", "text_model.")) for k in state_dict):
        hint = (
            " These are Hugging Face transformers names (vision_model.*), which are not "
            "supported: use the OpenAI or open_clip checkpoint."
        )
    raise sd.StateDictMismatchError(
        "CLIP ViT: no image-tower keys in the state dict (expected 'visual.conv1.weight', "
        f"'visual.class_embedding', ...; got e.g. {sorted(state_dict)[:5]}).{hint}"
    )


def convert_clip_visual(
    state_dict: sd.StateDict, config: CLIPVisionConfig = CLIP_VIT_B32
) -> dict[str, Any]:
    """Maps a CLIP state dict's image tower onto `CLIPVisionTransformer(config)`, one-to-one.

    Every `visual.*` key must be used; keys outside `visual.` (the text tower, `logit_scale`) are
    ignored. fp16 weights (as OpenAI ships them) are cast to float32.

    Raises:
      StateDictMismatchError: no image tower, or keys missing, unexpected or mis-shaped for `config`.
    """
    prefix = _split_prefix(state_dict)
    model = CLIPVisionTransformer(config)
    target = sd.init_shapes(model, jnp.zeros((1, config.image_size, config.image_size, 3)))
    return sd.torch_to_flax(
        state_dict,
        target,
        prefix=prefix,
        ignore=(lambda k: not k.startswith(prefix)) if prefix else (lambda k: False),
        architecture=f"CLIP ViT ({config})",
    )


def load_clip_visual(
    checkpoint_path: str | os.PathLike[str], config: CLIPVisionConfig = CLIP_VIT_B32
) -> tuple[CLIPVisionTransformer, dict[str, Any]]:
    """Reads a `.safetensors` / `.pt` CLIP state dict: `(module, variables)` of its image tower."""
    return CLIPVisionTransformer(config), convert_clip_visual(
        sd.load_state_dict(checkpoint_path), config
    )


def clip_vit_b32_encoder(
    checkpoint_path: str | os.PathLike[str], *, config: CLIPVisionConfig = CLIP_VIT_B32
) -> Encoder:
    """The registry factory for OpenAI CLIP ViT-B/32's image tower.

    Args:
      checkpoint_path: an OpenAI-layout CLIP state dict (`.safetensors` or zip `.pt`), e.g.
        open_clip's `ViT-B-32` / `openai` weights.
      config: override the architecture (defaults to ViT-B/32 at 224 px).

    Returns:
      The `Encoder` 'clip_vit_b32': `embed` maps `[batch, h, w, 3]` pixels in [0, 255] to
      `[batch, 512]`; its `preprocess` resizes the shorter side to 224 (bicubic), center-crops
      224 and applies CLIP's mean/std.
    """
    module, variables = load_clip_visual(checkpoint_path, config)
    preprocess = make_preprocess(config.image_size, CLIP_MEAN, CLIP_STD, "bicubic")
    return Encoder(
        "clip_vit_b32",
        config.image_size,
        config.output_dim,
        preprocess,
        module.apply,
        variables,
        f"CLIP ViT image tower (OpenAI layout); shorter side to {config.image_size} (bicubic), "
        "center crop, CLIP mean/std",
    )


def _registry_factory(
    path: str | os.PathLike[str] | None = None, *, config: CLIPVisionConfig | None = None
):
    """`get_encoder('clip_vit_b32', path=...)`: the registry's `path=` convention."""
    if path is None:
        raise ValueError(
            "path: encoder 'clip_vit_b32' has no shipped weights; pass path= to "
            "an OpenAI-layout CLIP ViT-B/32 state dict (e.g. open_clip's ViT-B-32 openai .safetensors)."
        )
    return clip_vit_b32_encoder(path, **({"config": config} if config is not None else {}))


def _register() -> None:
    # The registry imports this module as a plugin; registering here keeps the name next to the
    # code it names.
    register_encoder("clip_vit_b32", _registry_factory, trained_on=("openai_clip/webimagetext",))


_register()
