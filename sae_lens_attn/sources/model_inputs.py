"""Checks on token rows before they reach a TransformerLens model.

A row longer than `model.cfg.n_ctx` is not refused by TransformerLens: it grows the
attention mask and rotary buffers in place, and later calls on the same model object fail
on a state_dict size mismatch. Token ids outside the vocabulary end in an IndexError deep
in the embedding. Both are rejected here, with what is valid.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sae_lens_attn.errors import InvalidInputError

if TYPE_CHECKING:
    import torch
    from transformer_lens import HookedTransformer


def check_token_rows(tokens: torch.Tensor, model: HookedTransformer, what: str = "tokens") -> None:
    """`tokens` `[pos]` or `[batch, pos]` fit `model`: `pos <= n_ctx`, ids in `[0, d_vocab)`."""
    if tokens.ndim not in (1, 2):
        raise InvalidInputError(f"{what}: shape {list(tokens.shape)}, expected [pos] or [batch, pos]")
    if tokens.is_floating_point() or tokens.is_complex():
        raise InvalidInputError(f"{what}: dtype {tokens.dtype}, expected integer token ids")
    length, n_ctx = tokens.shape[-1], model.cfg.n_ctx
    if length > n_ctx:
        raise InvalidInputError(
            f"{what}: rows of {length} tokens, but the model's context is n_ctx={n_ctx}; "
            f"use rows of at most {n_ctx} tokens"
        )
    if tokens.numel():
        low, high, d_vocab = int(tokens.min()), int(tokens.max()), model.cfg.d_vocab
        if low < 0 or high >= d_vocab:
            raise InvalidInputError(
                f"{what}: token id {low if low < 0 else high} is outside the model's "
                f"vocabulary 0..{d_vocab - 1}"
            )
