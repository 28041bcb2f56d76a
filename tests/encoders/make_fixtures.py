"""Rebuilds the small MobileNetV1 reference fixture in dkvb_jax/assets.

Needs ../shared and the optional ai-edge-litert. Run from the repo root:

  python tests/encoders/make_fixtures.py
"""

import io
import zipfile

import jax.numpy as jnp
import numpy as np
from PIL import Image

from dkvb_jax.encoders import _images, tflite_convert

TFLITE = "../shared/weights/mobilenet_v1/mobilenet_v1_1.0_224_quant_embedding_extractor.tflite"
CIFAR_ZIP = "../shared/data/cifar10/cifar10-jpeg.zip"
ASSETS = "dkvb_jax/assets"


def main() -> None:
    src = zipfile.ZipFile(CIFAR_ZIP)
    classes = sorted(
        {n.split("/")[1] for n in src.namelist() if n.startswith("test/") and n.count("/") == 2}
    )
    names = [f"test/{c}/{i:04d}.jpg" for c in classes for i in (0, 1)]
    # The JPEG bytes are copied unchanged; fixed timestamps keep the zip reproducible.
    with zipfile.ZipFile(f"{ASSETS}/cifar10_test_samples.zip", "w", zipfile.ZIP_STORED) as z:
        for n in names:
            z.writestr(zipfile.ZipInfo(n, date_time=(2020, 1, 1, 0, 0, 0)), src.read(n))
    images = np.stack(
        [np.asarray(Image.open(io.BytesIO(src.read(n))).convert("RGB")) for n in names]
    )
    # The interpreter takes uint8 at 224: the library's bilinear resize, rounded.
    x224 = jnp.clip(jnp.round(_images.resize_to(_images.as_float(images), 224)), 0, 255)
    q = tflite_convert.interpreter_embeddings(TFLITE, np.asarray(x224).astype(np.uint8))
    scale, zero_point = tflite_convert.output_quantization(TFLITE)
    np.savez(
        f"{ASSETS}/mobilenet_v1_reference.npz",
        names=np.array(names),
        embedding_uint8=q,
        scale=scale,
        zero_point=zero_point,
    )
    print(f"wrote {len(names)} images and their {q.shape} uint8 embeddings")


if __name__ == "__main__":
    main()
