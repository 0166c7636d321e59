"""The ``gpt`` family: a small decoder-only transformer whose model dimension is the width.

Pre-norm blocks (LayerNorm, causal self-attention, LayerNorm, a 4x MLP with GELU), learned
token and position embeddings, a final LayerNorm and a linear readout to the characters. The
depth (``model.depth`` blocks) is fixed while the width varies; the number of heads grows with
the width at a fixed head size (``model.head_size``), as the field scales transformers.

Under muP (the same Table 8 form as study.model's MLP, ``m = width / base_width``):

| parameter                                      | init              | forward | Adam lr |
|------------------------------------------------|-------------------|---------|---------|
| token and position embeddings                  | N(0, 1)           | 1       | lr      |
| LayerNorm gains and biases                     | 1, 0              | 1       | lr      |
| attention and MLP matrices (width -> width)    | default           | 1       | lr/m    |
| their biases                                   | default * sqrt(m) | 1       | lr      |
| readout weights (width -> characters)          | default * sqrt(m) | 1/m     | lr      |

Attention logits are scaled by ``sqrt(base head size) / head size``: muP's 1/d rule, equal to
SP's 1/sqrt(d) when the head size is the base's. Here the head size is fixed while the heads
multiply, so the rule is a constant; it matters for a space that grows the head size. At
``width == base_width`` muP is SP exactly, as for the MLP.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["GPT"]


class _Block(nn.Module):
    def __init__(self, width: int, heads: int, attn_scale: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        self.fc = nn.Linear(width, 4 * width)
        self.fc_out = nn.Linear(4 * width, width)
        self.heads = heads
        self.attn_scale = attn_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, w = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(w, dim=2)
        q, k, v = (z.view(b, t, self.heads, w // self.heads).transpose(1, 2) for z in (q, k, v))
        a = nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=True, scale=self.attn_scale
        )
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, w))
        return x + self.fc_out(nn.functional.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    """Characters in, logits over the next character at every position out: [B, T] -> [B, T, V].

    ``roles`` lists every parameter with its muP role (study.model.ROLES, and ``norm``), from
    which study.model.param_groups builds the optimizer's groups.
    """

    def __init__(
        self,
        vocab: int,
        context: int,
        width: int,
        depth: int,
        head_size: int,
        base_width: int,
        mup: bool,
        readout: type[nn.Linear] = nn.Linear,
    ) -> None:
        super().__init__()
        if width % head_size:
            raise ValueError(f"width {width} is not a multiple of the head size {head_size}")
        self.mup = mup
        self.width_mult = width / base_width if mup else 1.0
        self.tokens = nn.Embedding(vocab, width)
        self.positions = nn.Embedding(context, width)
        scale = 1 / math.sqrt(head_size)  # SP; muP's 1/d form below equals it at this head size
        self.blocks = nn.ModuleList(_Block(width, width // head_size, scale) for _ in range(depth))
        self.ln = nn.LayerNorm(width)
        self.out = readout(width, vocab)  # (the mup package's MuReadout, in its test)
        roles: list[tuple[str, nn.Parameter]] = [
            ("input", self.tokens.weight),
            ("input", self.positions.weight),
        ]
        for blk in self.blocks:
            roles += [("norm", blk.ln1.weight), ("norm", blk.ln1.bias)]
            roles += [("norm", blk.ln2.weight), ("norm", blk.ln2.bias)]
            for layer in (blk.qkv, blk.proj, blk.fc, blk.fc_out):
                roles += [("hidden_weight", layer.weight), ("hidden_bias", layer.bias)]
        roles += [("norm", self.ln.weight), ("norm", self.ln.bias)]
        roles += [("output_weight", self.out.weight), ("output_bias", self.out.bias)]
        assert len(roles) == len(list(self.parameters()))
        self.roles = roles
        if mup and self.width_mult != 1.0:
            with torch.no_grad():
                for role, p in roles:
                    if role in ("hidden_bias", "output_weight", "output_bias"):
                        p.mul_(math.sqrt(self.width_mult))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        x = self.tokens(idx) + self.positions(torch.arange(t, device=idx.device))
        for blk in self.blocks:
            x = blk(x)
        x = self.ln(x)
        if self.mup:
            x = x / self.width_mult
        return self.out(x)
