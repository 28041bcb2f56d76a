"""Rebuilds the small MobileNetV1 reference fixture in dkvb_jax/assets (needs ../shared and ai-edge-litert).

Run from the repo root: python tests/encoders/make_fixtures.py
"""
import io, zipfile, numpy as np, jax
from PIL import Image
from dkvb_jax.encoders import tflite_convert, _images
TFL='../shared/weights/mobilenet_v1/mobilenet_v1_1.0_224_quant_embedding_extractor.tflite'
src=zipfile.ZipFile('../shared/data/cifar10/cifar10-jpeg.zip')
classes=sorted({n.split('/')[1] for n in src.namelist() if n.startswith('test/') and n.count('/')==2})
names=[f'test/{c}/{i:04d}.jpg' for c in classes for i in (0,1)]
with zipfile.ZipFile('dkvb_jax/assets/cifar10_test_samples.zip','w',zipfile.ZIP_STORED) as z:
    for n in names:
        zi=zipfile.ZipInfo(n, date_time=(2020,1,1,0,0,0)); z.writestr(zi, src.read(n))
imgs=np.stack([np.asarray(Image.open(io.BytesIO(src.read(n))).convert('RGB')) for n in names])
x8=np.asarray(jax.numpy.clip(jax.numpy.round(_images.resize_to(_images.as_float(imgs),224)),0,255)).astype(np.uint8)
q=tflite_convert.interpreter_embeddings(TFL,x8)
scale,zp=tflite_convert.output_quantization(TFL)
np.savez('dkvb_jax/assets/mobilenet_v1_reference.npz', names=np.array(names), embedding_uint8=q, scale=scale, zero_point=zp)
print(q.shape, scale, zp)
