"""A GPT-style decoder (Radford et al. 2019, as nanoGPT writes it) as an nn.Sequential whose children
are the places a pipeline may cut it: the token and position embeddings, then pre-LayerNorm blocks of
causal self-attention and MLP, then the final LayerNorm and the head.

Input tokens (B, T) int64; activations between stages (B, T, width); output logits (B, T, vocab).
The embedding and the head are not tied (they sit on different stages); dropout defaults to 0, so the
locked modes reproduce one process exactly.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Block", "Embeddings", "Head", "gpt"]


class Embeddings(nn.Module):
    def __init__(self, vocab_size: int, context: int, width: int, dropout: float):
        super().__init__()
        self.token = nn.Embedding(vocab_size, width)
        self.position = nn.Embedding(context, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        return self.dropout(self.token(tokens) + self.position(positions))  # (B, T, width)


class CausalSelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not a multiple of heads {heads}")
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = (part.view(b, t, self.heads, c // self.heads).transpose(1, 2)  # (B, heads, T, head width)
                   for part in self.qkv(x).split(c, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    """x + attention(LN(x)), then x + MLP(LN(x)): the residual stream keeps its width end to end."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attention = CausalSelfAttention(width, heads, dropout)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class Head(nn.Module):
    def __init__(self, width: int, vocab_size: int):
        super().__init__()
        self.ln = nn.LayerNorm(width)
        self.out = nn.Linear(width, vocab_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.ln(x))


def gpt(input_shape: tuple[int, ...], num_classes: int, layers: int = 4, heads: int = 4, width: int = 128,
        dropout: float = 0.0) -> nn.Sequential:
    """A character model for contexts of ``input_shape[0]`` tokens over a vocabulary of `num_classes`
    (defaults: nanoGPT's CPU configuration, 4 layers, 4 heads, width 128). Weights as GPT-2 initialises
    them: normal(0, 0.02), the projections into the residual stream scaled by 1/sqrt(2 layers)."""
    (context,) = input_shape
    model = nn.Sequential(Embeddings(num_classes, context, width, dropout),
                          *(Block(width, heads, dropout) for _ in range(layers)), Head(width, num_classes))
    for name, p in model.named_parameters():
        if p.dim() == 2:
            residual = name.endswith(("attention.proj.weight", "mlp.2.weight"))
            nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * layers) if residual else 0.02)
        elif name.endswith("bias"):
            nn.init.zeros_(p)
    return model
