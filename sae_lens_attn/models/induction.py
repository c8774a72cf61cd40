"""Induction-head scores on repeated random token sequences (TransformerLens style).

The sequence is `[BOS, r_1..r_L, r_1..r_L]` with `r` uniform random tokens. At a position
`q` of the second copy, an induction head attends to the token that followed the previous
occurrence of the current token, i.e. source `q - L + 1`. A head's score is its mean
attention on that source over every `q` of the second copy: 1.0 is a perfect induction
head, about `1 / q` a uniform one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformer_lens import HookedTransformer


def repeated_random_tokens(
    batch: int, half_length: int, d_vocab: int, bos_token_id: int, seed: int = 0
) -> torch.Tensor:
    """`[batch, 1 + 2 * half_length]`: BOS, then a random sequence twice (BOS never drawn)."""
    import torch

    if half_length < 2 or batch < 1:
        raise ValueError(f"need batch >= 1 and half_length >= 2, got {batch}, {half_length}")
    generator = torch.Generator().manual_seed(seed)
    # draw from the vocabulary without the BOS token, then shift ids past it
    half = torch.randint(0, d_vocab - 1, (batch, half_length), generator=generator)
    half = half + (half >= bos_token_id).long()
    bos = torch.full((batch, 1), bos_token_id, dtype=torch.long)
    return torch.cat([bos, half, half], dim=1)


def _repeated_patterns(
    model: HookedTransformer, batch: int, half_length: int, seed: int
) -> list[torch.Tensor]:
    """Attention patterns `[batch, head, q, k]` of every layer on repeated random tokens."""
    import torch

    bos = model.tokenizer.bos_token_id if model.tokenizer is not None else 0
    tokens = repeated_random_tokens(batch, half_length, model.cfg.d_vocab, bos, seed)
    if tokens.shape[1] > model.cfg.n_ctx:
        raise ValueError(
            f"half_length {half_length} needs {tokens.shape[1]} positions; the model has "
            f"n_ctx {model.cfg.n_ctx}: use half_length <= {(model.cfg.n_ctx - 1) // 2}"
        )
    with torch.no_grad():
        _, cache = model.run_with_cache(
            tokens.to(model.cfg.device), names_filter=lambda name: name.endswith("pattern")
        )
    return [cache["pattern", layer] for layer in range(model.cfg.n_layers)]


def previous_token_scores(
    model: HookedTransformer, batch: int = 16, half_length: int = 50, seed: int = 0
) -> torch.Tensor:
    """`[n_layers, n_heads]` mean attention from each position to the one before it, on the
    same sequences as `induction_scores` (the other half of an induction circuit)."""
    import torch

    patterns = _repeated_patterns(model, batch, half_length, seed)
    dest = torch.arange(1, 2 * half_length + 1)
    return torch.stack([p[:, :, dest, dest - 1].mean(dim=(0, 2)) for p in patterns]).float().cpu()


def induction_scores(
    model: HookedTransformer, batch: int = 16, half_length: int = 50, seed: int = 0
) -> torch.Tensor:
    """`[n_layers, n_heads]` mean attention on the induction target over the second copy."""
    import torch

    patterns = _repeated_patterns(model, batch, half_length, seed)
    dest = torch.arange(half_length + 1, 2 * half_length + 1)
    src = dest - half_length + 1
    return torch.stack([p[:, :, dest, src].mean(dim=(0, 2)) for p in patterns]).float().cpu()
