"""Reusable blocks (one concept per file); explicit exports only."""
from ssckit.models.layers.aspp import ASPP3D
from ssckit.models.layers.positional import LearnableSqueezePositionalEncoding
from ssckit.models.layers.squeeze_attention import DeformableSqueezeAttention
from ssckit.models.layers.token_select import TokenSelection, gather_tokens, scatter_selected_tokens, select_tokens
from ssckit.models.layers.transformer import DeformableTransformerLayer, TransformerLayer

__all__ = [
    "ASPP3D",
    "DeformableSqueezeAttention",
    "DeformableTransformerLayer",
    "LearnableSqueezePositionalEncoding",
    "TokenSelection",
    "TransformerLayer",
    "gather_tokens",
    "scatter_selected_tokens",
    "select_tokens",
]
