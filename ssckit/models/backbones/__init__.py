"""Image backbones: ResNet-50 (timm), the MaskDINO pixel decoder and the Symphonies encoder wrapper."""
from ssckit.models.backbones.pixel_decoder import (DeformableEncoderLayer, MaskDINOPixelDecoder, PixelDecoderOutput,
                                                   sine_position_encoding)
from ssckit.models.backbones.resnet import ResNetBackbone, count_parameters, frozen_bn_affine_numel
from ssckit.models.backbones.symphonies_encoder import EncoderOutput, SymphoniesEncoder

__all__ = [
    "DeformableEncoderLayer", "EncoderOutput", "MaskDINOPixelDecoder", "PixelDecoderOutput", "ResNetBackbone",
    "SymphoniesEncoder", "count_parameters", "frozen_bn_affine_numel", "sine_position_encoding",
]
