"""The torch side of the encoder cross-checks, run in a separate interpreter that has torch.

The test suite's Python has no torch (no wheel for it on these machines), so the tests run this
script with the torch venv's Python (see `torch_subprocess.py`) and compare with what it writes:

    python torch_reference.py resnet50 OUT_DIR      # torchvision's resnet50(), random weights
    python torch_reference.py clip_vit_b32 OUT_DIR  # open_clip's ViT-B-32 (QuickGELU), random
    python torch_reference.py save_tensors OUT_DIR  # torch.save of views, fp16, bf16, Parameter
    python torch_reference.py load FILE OUT_DIR     # torch.load(weights_only=True) of our file

Each writes `OUT_DIR/reference.npz` (inputs and outputs as float32/int NumPy arrays) and, for the
models and `save_tensors`, the checkpoint that `torch.save` wrote (`OUT_DIR/model.pt`). Only
NumPy and the torch packages are imported, never dkvb_jax.
"""

from __future__ import annotations

import pathlib
import sys
import types

import numpy as np

# PyPI's torchvision wheel is the CUDA build: its C++ ops (nms, roi_align) need libtorch_cuda,
# which the CPU torch lacks, and registering their fake kernels at import fails. The model
# definitions are plain Python and need none of them.
sys.modules.setdefault(
    "torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations")
)

import torch  # noqa: E402


def _images(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def resnet50(out: pathlib.Path) -> dict[str, np.ndarray]:
    """torchvision's ResNet-50 with random weights and non-trivial batch-norm statistics."""
    from torchvision.models import resnet50 as build

    torch.manual_seed(0)
    model = build(weights=None)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5), m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1), m.running_var.uniform_(0.5, 1.5)
    model.eval()
    torch.save(model.state_dict(), out / "model.pt")
    # Odd, non-square sizes exercise the floor arithmetic of strided convs and pooling.
    images = _images((2, 67, 83, 3), seed=1)
    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2)
        feats = torch.nn.Sequential(*list(model.children())[:-1])(x).flatten(1)
        logits = model(x)
    return {"images": images, "embedding": feats.numpy(), "logits": logits.numpy()}


def clip_vit_b32(out: pathlib.Path) -> dict[str, np.ndarray]:
    """open_clip's ViT-B-32 with random weights, saved in fp16 with its text tower (as OpenAI's)."""
    import open_clip

    torch.manual_seed(0)
    # QuickGELU: the activation of OpenAI's weights, which open_clip switches on for them.
    model = open_clip.create_model("ViT-B-32", pretrained=None, force_quick_gelu=True)
    model.eval().half()
    torch.save(model.state_dict(), out / "model.pt")
    model.float()  # the reference runs in float32 on exactly the stored (fp16-rounded) weights
    images = _images((2, 224, 224, 3), seed=2)
    with torch.no_grad():
        emb = model.encode_image(torch.from_numpy(images).permute(0, 3, 1, 2))
    return {"images": images, "embedding": emb.numpy()}


def save_tensors(out: pathlib.Path) -> dict[str, np.ndarray]:
    """Tensors that exercise torch's storage layout: views, transposes, fp16, bf16, Parameter."""
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state = {
        "w": base,
        "wT": base.T,
        "row": base[2],
        "half": base.half(),
        "bf16": base.bfloat16(),
        "n": torch.tensor(5),
        "p": torch.nn.Parameter(torch.ones(3)),
    }
    torch.save(state, out / "model.pt")
    # bf16 has no NumPy dtype: its values (exact in float32) are compared in float32.
    return {
        k: (v.detach().float() if v.dtype == torch.bfloat16 else v.detach()).numpy()
        for k, v in state.items()
    }


def load(path: pathlib.Path) -> dict[str, np.ndarray]:
    """What `torch.load(weights_only=True)` reads from a file we wrote."""
    loaded = torch.load(path, weights_only=True)
    return {"__order__": np.array(list(loaded)), **{k: v.numpy() for k, v in loaded.items()}}


def main(argv: list[str]) -> None:
    command, *args = argv
    out = pathlib.Path(args[-1])
    out.mkdir(parents=True, exist_ok=True)
    if command == "load":
        arrays = load(pathlib.Path(args[0]))
    else:
        arrays = {"resnet50": resnet50, "clip_vit_b32": clip_vit_b32, "save_tensors": save_tensors}[
            command
        ](out)
    np.savez(out / "reference.npz", **arrays, torch_version=np.array(torch.__version__))


if __name__ == "__main__":
    main(sys.argv[1:])
