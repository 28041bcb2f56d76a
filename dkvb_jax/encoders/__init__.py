"""Frozen pretrained image encoders (Flax, inference only) and their weight converters.

from dkvb_jax.encoders import get_encoder
encoder = get_encoder('mobilenet_v1')           # weights ship with the package
embeddings = encoder.embed(images_uint8)        # [batch, 1024] float32
"""

from dkvb_jax.encoders.cifar_resnet import CifarResNet, load_cifar_resnet
from dkvb_jax.encoders.mobilenet_v1 import MobileNetV1, load_mobilenet_v1
from dkvb_jax.encoders.registry import (
    DEFAULT_ENCODER,
    Encoder,
    encoder_from_function,
    encoder_from_module,
    encoder_provenance,
    get_encoder,
    list_encoders,
    register_encoder,
)

__all__ = [
    "CifarResNet",
    "DEFAULT_ENCODER",
    "Encoder",
    "MobileNetV1",
    "encoder_from_function",
    "encoder_from_module",
    "get_encoder",
    "list_encoders",
    "load_cifar_resnet",
    "load_mobilenet_v1",
    "encoder_provenance",
    "register_encoder",
]
