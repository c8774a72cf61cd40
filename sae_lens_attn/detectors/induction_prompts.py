"""Random-token prompts that test "<t> is next by induction" for many tokens at once.

Each sequence packs `K = pairs_per_sequence` tests. With distinct random tokens `A_i`,
tested tokens `t_i` and random fillers `f`:

    B A_1 t_1 f.. A_2 t_2 f.. ... A_K t_K f..   A_p(1) f.. A_p(2) f.. ... A_p(K) f..

(`gap` fillers after each block, `p` a random permutation, `B` the BOS token or, without
one, a random filler: no `A` sits at position 0, where attention has nowhere else to go). At the second `A_i` an
induction head attends to `t_i` and predicts it: that position is an induction test of
`t_i` and, for every other token, an "A <other> ... A" control. The first `A_i` has no
earlier `A_i`: a "no earlier A" control for every token. The `A`s of a sequence are
distinct, and fillers are never an `A` or a tested token of their sequence.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["InductionPrompts", "induction_prompts"]


@dataclass(frozen=True)
class InductionPrompts:
    """`tokens [n_seq, seq_len]`; per test slot `[n_seq, K]`: `test_positions` (second
    `A_i`), `first_positions` (first `A_i`) and `tested_tokens` (`t_i`)."""

    tokens: torch.Tensor
    test_positions: torch.Tensor
    first_positions: torch.Tensor
    tested_tokens: torch.Tensor

    def __len__(self) -> int:
        return self.tokens.shape[0]


def _draw(pool: torch.Tensor, shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    return pool[torch.randint(len(pool), shape, generator=generator)]


def _redraw_until_clean(
    values: torch.Tensor,
    bad: Callable[[torch.Tensor], torch.Tensor],
    pool: torch.Tensor,
    generator: torch.Generator,
    max_rounds: int = 1000,
) -> torch.Tensor:
    """Redraw the entries `bad(values)` flags until none is flagged."""
    for _ in range(max_rounds):
        mask = bad(values)
        if not mask.any():
            return values
        values = values.clone()
        values[mask] = _draw(pool, (int(mask.sum()), 1), generator).flatten()
    raise RuntimeError("could not draw distinct random tokens: the token pool is too small")


def induction_prompts(
    tested: torch.Tensor,
    pool: torch.Tensor,
    n_prompts: int = 8,
    pairs_per_sequence: int = 8,
    gap: int = 1,
    bos_token_id: int | None = None,
    seed: int = 0,
) -> InductionPrompts:
    """Prompts testing each token of `tested [n]` `n_prompts` times or more (slots left in
    the last sequence test random tokens of `pool [m]`, the ids random tokens come from)."""
    if n_prompts < 1 or pairs_per_sequence < 1 or gap < 0:
        raise ValueError(
            f"need n_prompts >= 1, pairs_per_sequence >= 1 and gap >= 0, got {n_prompts}, "
            f"{pairs_per_sequence}, {gap}"
        )
    if len(pool) < 4 * pairs_per_sequence + 2:
        raise ValueError(
            f"the token pool has {len(pool)} tokens; {pairs_per_sequence} pairs per sequence "
            f"need at least {4 * pairs_per_sequence + 2}: lower pairs_per_sequence"
        )
    generator = torch.Generator().manual_seed(seed)
    slots = tested.reshape(-1).long().repeat(n_prompts)
    slots = slots[torch.randperm(len(slots), generator=generator)]
    n_seq = max(1, -(-len(slots) // pairs_per_sequence))
    padding = _draw(pool, (1, n_seq * pairs_per_sequence - len(slots)), generator).flatten()
    t = torch.cat([slots, padding]).reshape(n_seq, pairs_per_sequence)

    def a_clashes(a: torch.Tensor) -> torch.Tensor:
        repeated = (a[:, :, None] == a[:, None, :]).triu(diagonal=1).any(dim=1)
        return repeated | (a[:, :, None] == t[:, None, :]).any(dim=2)

    a = _redraw_until_clean(_draw(pool, t.shape, generator), a_clashes, pool, generator)
    taken = torch.cat([a, t], dim=1)
    fillers = _redraw_until_clean(
        _draw(pool, (n_seq, 2 * pairs_per_sequence * gap + 1), generator),
        lambda f: (f[:, :, None] == taken[:, None, :]).any(dim=2),
        pool,
        generator,
    )
    lead = fillers[:, -1:] if bos_token_id is None else torch.full((n_seq, 1), bos_token_id)
    fillers = fillers[:, :-1].reshape(n_seq, 2 * pairs_per_sequence, gap)

    first_blocks = torch.cat([a[:, :, None], t[:, :, None], fillers[:, :pairs_per_sequence]], dim=2)
    order = torch.argsort(torch.rand(n_seq, pairs_per_sequence, generator=generator), dim=1)
    second_blocks = torch.cat([a.gather(1, order)[:, :, None], fillers[:, pairs_per_sequence:]], dim=2)
    tokens = torch.cat([lead.long(), first_blocks.flatten(1), second_blocks.flatten(1)], dim=1)
    offset = 1

    first_positions = offset + torch.arange(pairs_per_sequence) * (2 + gap)
    second_start = offset + pairs_per_sequence * (2 + gap)
    # slot i's second A sits at the block where order == i
    second_positions = torch.empty_like(order)
    second_positions.scatter_(1, order, second_start + torch.arange(pairs_per_sequence).expand(n_seq, -1) * (1 + gap))
    return InductionPrompts(
        tokens=tokens,
        test_positions=second_positions,
        first_positions=first_positions.expand(n_seq, -1).clone(),
        tested_tokens=t,
    )
