"""CLIP ViT image tower (OpenAI / open_clip layout): converter one-to-one, forward vs references."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from torch_subprocess import run_torch
from torch_zip_writer import save_torch_zip

from dkvb_jax.encoders import clip
from dkvb_jax.encoders import state_dict as sd

TINY = clip.CLIPVisionConfig(image_size=8, patch_size=4, width=8, layers=2, heads=2, output_dim=6)


def openai_visual_state(config: clip.CLIPVisionConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights under OpenAI CLIP's `VisionTransformer` names and shapes (no prefix)."""
    rng = np.random.default_rng(seed)
    w, p = config.width, config.patch_size
    normal = lambda *shape, std=0.3: rng.normal(0, std, shape).astype(np.float32)
    s = {
        "conv1.weight": normal(w, 3, p, p, std=(3 * p * p) ** -0.5),
        "class_embedding": normal(w),
        "positional_embedding": normal(config.tokens, w),
        "proj": normal(w, config.output_dim),
    }
    for ln in ("ln_pre", "ln_post"):
        s[f"{ln}.weight"], s[f"{ln}.bias"] = 1 + normal(w, std=0.1), normal(w, std=0.1)
    hidden = w * config.mlp_ratio
    for i in range(config.layers):
        b = f"transformer.resblocks.{i}."
        for ln in ("ln_1", "ln_2"):
            s[f"{b}{ln}.weight"], s[f"{b}{ln}.bias"] = 1 + normal(w, std=0.1), normal(w, std=0.1)
        s[f"{b}attn.in_proj_weight"], s[f"{b}attn.in_proj_bias"] = (
            normal(3 * w, w, std=w**-0.5),
            normal(3 * w),
        )
        s[f"{b}attn.out_proj.weight"], s[f"{b}attn.out_proj.bias"] = (
            normal(w, w, std=w**-0.5),
            normal(w),
        )
        s[f"{b}mlp.c_fc.weight"], s[f"{b}mlp.c_fc.bias"] = (
            normal(hidden, w, std=w**-0.5),
            normal(hidden),
        )
        s[f"{b}mlp.c_proj.weight"], s[f"{b}mlp.c_proj.bias"] = (
            normal(w, hidden, std=hidden**-0.5),
            normal(w),
        )
    return s


def text_tower_state(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A few text-tower keys; some share names with the visual tower minus its prefix."""
    return {
        "positional_embedding": rng.normal(size=(7, 4)).astype(np.float32),
        "transformer.resblocks.0.attn.in_proj_weight": rng.normal(size=(12, 4)).astype(np.float32),
        "token_embedding.weight": rng.normal(size=(11, 4)).astype(np.float32),
        "ln_final.weight": np.ones(4, np.float32),
        "text_projection": rng.normal(size=(4, 6)).astype(np.float32),
        "logit_scale": np.array(4.6, np.float32),
    }


# ---- NumPy reference forward (float64) -------------------------------------------------------


def np_layer_norm(x, s, name):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-5) * s[f"{name}.weight"] + s[f"{name}.bias"]


def np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_clip_visual(state, images, config):
    s = {k: v.astype(np.float64) for k, v in state.items()}
    b, p, w, heads = images.shape[0], config.patch_size, config.width, config.heads
    g = config.image_size // p
    # [b, gy, py, gx, px, c] -> [b, gy*gx, c*py*px]: the flattening order of an OIHW kernel.
    patches = (
        images.astype(np.float64)
        .reshape(b, g, p, g, p, 3)
        .transpose(0, 1, 3, 5, 2, 4)
        .reshape(b, g * g, -1)
    )
    x = patches @ s["conv1.weight"].reshape(w, -1).T
    x = (
        np.concatenate([np.broadcast_to(s["class_embedding"], (b, 1, w)), x], 1)
        + s["positional_embedding"]
    )
    x = np_layer_norm(x, s, "ln_pre")
    for i in range(config.layers):
        pre = f"transformer.resblocks.{i}."
        h = np_layer_norm(x, s, pre + "ln_1")
        q, k, v = np.split(
            h @ s[pre + "attn.in_proj_weight"].T + s[pre + "attn.in_proj_bias"], 3, -1
        )
        split = lambda t: t.reshape(b, -1, heads, w // heads).transpose(0, 2, 1, 3)
        att = np_softmax(split(q) @ split(k).transpose(0, 1, 3, 2) / np.sqrt(w // heads))
        o = (att @ split(v)).transpose(0, 2, 1, 3).reshape(b, -1, w)
        x = x + o @ s[pre + "attn.out_proj.weight"].T + s[pre + "attn.out_proj.bias"]
        h = (
            np_layer_norm(x, s, pre + "ln_2") @ s[pre + "mlp.c_fc.weight"].T
            + s[pre + "mlp.c_fc.bias"]
        )
        h = h / (1 + np.exp(-1.702 * h))  # QuickGELU
        x = x + h @ s[pre + "mlp.c_proj.weight"].T + s[pre + "mlp.c_proj.bias"]
    return np_layer_norm(x[:, 0], s, "ln_post") @ s["proj"]


def assert_close(got, ref):
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


# ---- fixtures ----------------------------------------------------------------------------------

VARIANTS = {
    # OpenAI's weights are fp16; clip.load(...).state_dict() has the text tower alongside.
    "openai_fp16_pt": dict(prefix="visual.", text=True, dtype=np.float16, fmt="pt"),
    # open_clip ViT-B-32 (openai): same names, float32, safetensors.
    "open_clip_safetensors": dict(prefix="visual.", text=True, dtype=np.float32, fmt="safetensors"),
    # a state dict of the image tower alone (model.visual.state_dict()).
    "visual_only_pt": dict(prefix="", text=False, dtype=np.float32, fmt="pt"),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from safetensors.numpy import save_file

    visual = openai_visual_state(TINY)
    root = tmp_path_factory.mktemp("clip")
    out = {}
    for name, v in VARIANTS.items():
        state = {v["prefix"] + k: a.astype(v["dtype"]) for k, a in visual.items()}
        if v["text"]:
            state.update(text_tower_state(np.random.default_rng(1)))
        path = root / f"{name}.{v['fmt']}"
        save_torch_zip(state, path) if v["fmt"] == "pt" else save_file(state, str(path))
        # The reference sees exactly the stored values (fp16-rounded where stored as fp16).
        out[name] = (path, {k: a.astype(v["dtype"]) for k, a in visual.items()}, state)
    return out


@pytest.fixture(scope="module")
def images():
    return (
        np.random.default_rng(2)
        .normal(size=(3, TINY.image_size, TINY.image_size, 3))
        .astype(np.float32)
    )


apply_tiny = jax.jit(clip.CLIPVisionTransformer(TINY).apply)


# ---- tests -------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_forward_matches_numpy_reference(checkpoints, images, variant):
    path, visual, _ = checkpoints[variant]
    _, variables = clip.load_clip_visual(path, TINY)
    got = apply_tiny(variables, images)
    assert got.shape == (3, TINY.output_dim) and got.dtype == jnp.float32
    assert_close(got, np_clip_visual(visual, images, TINY))


def test_forward_matches_open_clip_vit_b32(tmp_path):
    """open_clip's ViT-B-32 (random weights; fp16 with its text tower, as OpenAI's checkpoints)."""
    ref = run_torch("clip_vit_b32", tmp_path)
    module, variables = clip.load_clip_visual(tmp_path / "model.pt")
    got = jax.jit(module.apply)(variables, jnp.asarray(ref["images"]))
    assert got.shape == (2, 512)
    assert_close(got, ref["embedding"])


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_names_map_one_to_one(checkpoints, variant):
    _, _, state = checkpoints[variant]
    prefix = VARIANTS[variant]["prefix"]
    variables = clip.convert_clip_visual(state, TINY)
    leaves = jax.tree_util.tree_leaves_with_path(variables)
    torch_keys = {
        prefix + sd.flax_leaf_to_torch_key(tuple(p.key for p in path))[0] for path, _ in leaves
    }
    visual_keys = {k for k in state if k.startswith(prefix)} if prefix else set(state)
    assert len(leaves) == len(visual_keys) and torch_keys == visual_keys


def test_default_config_is_vit_b32():
    shapes = sd.init_shapes(
        clip.CLIPVisionTransformer(clip.CLIP_VIT_B32), jnp.zeros((1, 224, 224, 3))
    )
    leaves = jax.tree_util.tree_leaves_with_path(shapes)
    assert sum(int(np.prod(x.shape)) for _, x in leaves) == 87_849_216  # OpenAI ViT-B/32 visual
    assert len(leaves) == 152  # visual.* keys of the OpenAI state dict
    by_key = {
        sd.flax_leaf_to_torch_key(tuple(p.key for p in path))[0]: sd.flax_leaf_to_torch_key(
            tuple(p.key for p in path)
        )[2](x.shape)
        for path, x in leaves
    }
    assert by_key["conv1.weight"] == (768, 3, 32, 32)
    assert by_key["positional_embedding"] == (50, 768)
    assert by_key["transformer.resblocks.11.attn.in_proj_weight"] == (2304, 768)
    assert by_key["proj"] == (768, 512)


@pytest.mark.parametrize(
    "edit, match",
    [
        (
            lambda s: s.pop("visual.transformer.resblocks.1.attn.in_proj_bias"),
            r"missing \(1\): visual.transformer.resblocks.1.attn.in_proj_bias",
        ),
        (
            lambda s: s.update(
                {"visual.transformer.resblocks.2.ln_1.weight": np.ones(8, np.float32)}
            ),
            r"unexpected \(1\): visual.transformer.resblocks.2.ln_1.weight",
        ),
        (
            lambda s: s.update(
                {"visual.transformer.resblocks.0.ls_1.gamma": np.ones(8, np.float32)}
            ),
            r"unexpected \(1\): visual.transformer.resblocks.0.ls_1.gamma",
        ),
        (
            lambda s: s.update({"visual.proj": np.ones((8, 7), np.float32)}),
            r"visual.proj: expected \(8, 6\), got \(8, 7\)",
        ),
    ],
)
def test_mismatched_state_dicts_name_the_keys(checkpoints, edit, match):
    state = dict(checkpoints["open_clip_safetensors"][2])
    edit(state)
    with pytest.raises(sd.StateDictMismatchError, match=match):
        clip.convert_clip_visual(state, TINY)


def test_wrong_architecture_is_a_clear_error(checkpoints):
    with pytest.raises(sd.StateDictMismatchError, match=r"CLIP ViT .*\n.*missing \(\d+\)"):
        clip.clip_vit_b32_encoder(checkpoints["openai_fp16_pt"][0])  # tiny, not ViT-B/32


def test_hugging_face_layout_is_named():
    state = {"vision_model.embeddings.patch_embedding.weight": np.zeros((8, 3, 4, 4), np.float32)}
    with pytest.raises(sd.StateDictMismatchError, match="Hugging Face"):
        clip.convert_clip_visual(state, TINY)


def test_truncated_checkpoint_is_a_clear_error(checkpoints, tmp_path):
    data = checkpoints["openai_fp16_pt"][0].read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(data[: len(data) - 200])
    with pytest.raises(ValueError, match="truncated"):
        clip.load_clip_visual(path, TINY)


def test_factory_returns_an_encoder(checkpoints):
    encoder = clip.clip_vit_b32_encoder(checkpoints["open_clip_safetensors"][0], config=TINY)
    preprocess = encoder.preprocess
    assert encoder.name == "clip_vit_b32"
    assert encoder.input_size == TINY.image_size and encoder.embed_dim == TINY.output_dim
    pixels = np.random.default_rng(3).integers(0, 256, (3, 20, 12, 3), dtype=np.uint8)
    x = preprocess(pixels)
    assert x.shape == (3, TINY.image_size, TINY.image_size, 3)
    z = apply_tiny(encoder.variables, x)
    assert z.shape == (3, TINY.output_dim)
    np.testing.assert_allclose(encoder.embed(pixels), np.asarray(z), rtol=1e-5, atol=1e-6)
    mean_pixel = np.broadcast_to(np.array(clip.CLIP_MEAN) * 255, (1, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(preprocess(mean_pixel)), 0.0, atol=1e-5)


def test_registered_in_get_encoder(checkpoints):
    from dkvb_jax.encoders.registry import get_encoder

    with pytest.raises(ValueError, match="no shipped weights; pass path="):
        get_encoder("clip_vit_b32")
    encoder = get_encoder("clip_vit_b32", path=checkpoints["openai_fp16_pt"][0], config=TINY)
    pixels = np.random.default_rng(4).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    assert encoder.embed(pixels, batch_size=2).shape == (3, TINY.output_dim)


def test_unpreprocessed_images_are_rejected(checkpoints):
    module, variables = clip.load_clip_visual(checkpoints["visual_only_pt"][0], TINY)
    with pytest.raises(ValueError, match="preprocess_fn"):
        module.apply(variables, jnp.zeros((1, 16, 16, 3)))


@pytest.mark.parametrize(
    "changes, field",
    [
        (dict(image_size=10), "image_size"),
        (dict(heads=3), "heads"),
        (dict(layers=0), "layers"),
    ],
)
def test_config_validation_names_the_field(changes, field):
    with pytest.raises(ValueError, match=f"CLIPVisionConfig.{field}"):
        dataclasses.replace(TINY, **changes)
