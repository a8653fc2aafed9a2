"""OpenAI CLIP (ViT image tower + causal text transformer) with CLIP's parameter names, for LSeg's ``clip_pretrained``.

LSeg checkpoints carry the whole CLIP model, so the module tree here reproduces CLIP's state-dict keys
(``positional_embedding``, ``text_projection``, ``logit_scale``, ``visual.*``, ``transformer.resblocks.N.*``,
``token_embedding``, ``ln_final``). Only the text tower is needed by the teacher: :meth:`CLIP.encode_text` turns BPE
token ids (N, context_length) -- as produced by ``clip.tokenize`` on a machine with the ``clip`` package; ssckit ships
no BPE vocabulary -- into (N, embed_dim) text embeddings. The image tower is kept for strict checkpoint loading and
implemented for completeness.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class CLIPConfig:
    """CLIP sizes; the defaults are ViT-B/32 (the text encoder of LSeg)."""

    embed_dim: int = 512
    image_resolution: int = 224
    vision_layers: int = 12
    vision_width: int = 768
    vision_patch_size: int = 32
    context_length: int = 77
    vocab_size: int = 49408
    transformer_width: int = 512
    transformer_heads: int = 8
    transformer_layers: int = 12

    @property
    def vision_heads(self) -> int:
        return max(1, self.vision_width // 64)  # CLIP: one head per 64 channels


class LayerNormFP32(nn.LayerNorm):
    """LayerNorm computed in float32 and cast back (CLIP keeps its norms in fp32 under fp16 weights)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x)); sequence-first (L, N, C) tensors."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = LayerNormFP32(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, width * 4))
        self.mlp.add_module("gelu", QuickGELU())
        self.mlp.add_module("c_proj", nn.Linear(width * 4, width))
        self.ln_2 = LayerNormFP32(width)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False, attn_mask=attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads) for _ in range(layers))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, attn_mask)
        return x


class VisionTransformer(nn.Module):
    """CLIP's image tower: patchify, [class] token, transformer, ln_post of the class token, projection."""

    def __init__(self, resolution: int, patch_size: int, width: int, layers: int, heads: int, output_dim: int) -> None:
        super().__init__()
        grid = resolution // patch_size
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(width) * width ** -0.5)
        self.positional_embedding = nn.Parameter(torch.randn(grid * grid + 1, width) * width ** -0.5)
        self.ln_pre = LayerNormFP32(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = LayerNormFP32(width)
        self.proj = nn.Parameter(torch.randn(width, output_dim) * width ** -0.5)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.conv1(image.to(self.conv1.weight.dtype))
        x = x.flatten(2).transpose(1, 2)  # (B, grid*grid, width)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x).transpose(0, 1)).transpose(0, 1)  # (B, 1+grid*grid, width)
        return self.ln_post(x[:, 0]) @ self.proj


class CLIP(nn.Module):
    """CLIP with OpenAI's module names; see the module docstring."""

    def __init__(self, config: CLIPConfig = CLIPConfig()) -> None:
        super().__init__()
        c = config
        self.config = c
        self.context_length = c.context_length
        # registration order follows CLIP's state_dict order
        self.positional_embedding = nn.Parameter(torch.empty(c.context_length, c.transformer_width))
        self.text_projection = nn.Parameter(torch.empty(c.transformer_width, c.embed_dim))
        self.logit_scale = nn.Parameter(torch.ones([]) * torch.log(torch.tensor(1 / 0.07)))
        self.visual = VisionTransformer(c.image_resolution, c.vision_patch_size, c.vision_width, c.vision_layers,
                                        c.vision_heads, c.embed_dim)
        self.transformer = Transformer(c.transformer_width, c.transformer_layers, c.transformer_heads)
        self.token_embedding = nn.Embedding(c.vocab_size, c.transformer_width)
        self.ln_final = LayerNormFP32(c.transformer_width)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=c.transformer_width ** -0.5)

    @staticmethod
    def causal_mask(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Additive (n, n) mask: -inf strictly above the diagonal (token i attends to tokens <= i)."""
        return torch.full((n, n), float("-inf"), dtype=dtype, device=device).triu(1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """BPE token ids (N, context_length) with the end-of-text token as the largest id -> (N, embed_dim).

        The embedding is read at each row's end-of-text position (its argmax), after ln_final, then projected.
        """
        if tokens.dim() != 2 or tokens.shape[1] != self.context_length:
            raise ValueError(f"token ids must be (N, {self.context_length}), got {tuple(tokens.shape)}")
        if tokens.dtype.is_floating_point:
            raise ValueError(f"token ids must be integers, got {tokens.dtype}")
        tokens = tokens.long().to(self.token_embedding.weight.device)
        x = self.token_embedding(tokens) + self.positional_embedding  # (N, L, width)
        mask = self.causal_mask(self.context_length, x.dtype, x.device)
        x = self.transformer(x.transpose(0, 1), mask).transpose(0, 1)  # (N, L, width)
        x = self.ln_final(x)
        eot = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]  # (N, width)
        return eot @ self.text_projection

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual(image)
