"""Ground-truth recovery metrics: MMCS (Sharkey et al.), per head and per feature kind.

Pure tensor math: directions in, numbers out. A *dictionary* is a set of rows
`[n, n_heads * d_head]` (true features, or an SAE's `W_dec`).
"""

from __future__ import annotations

import torch
from sae_lens.util import cosine_similarities


def max_cosine_per_feature(true: torch.Tensor, learned: torch.Tensor) -> torch.Tensor:
    """`[n_true]`: each true row's largest cosine with any learned row.

    true: `[n_true, d]`, learned: `[n_learned, d]`. Signed (a ReLU SAE's decoder row
    points along the feature it detects); a zero row has cosine 0 with everything.
    """
    if learned.shape[0] == 0:
        return torch.zeros(true.shape[0])
    return cosine_similarities(true.float(), learned.float()).max(dim=1).values


def mmcs(true: torch.Tensor, learned: torch.Tensor) -> float:
    """Mean max cosine similarity: `mean_i max_j cos(true_i, learned_j)`.

    Also the between-dictionaries score when `true` is a smaller learned dictionary.
    """
    return float(max_cosine_per_feature(true, learned).mean())


def split_cosine_per_feature(
    true: torch.Tensor, learned: torch.Tensor, n_heads: int
) -> torch.Tensor:
    """`[n_true]`: cosine of each true row with its best *one-learned-row-per-head* sum.

    For a true row `v` with head slices `v_h` and the best learned slice direction
    `u_h` in every head (`c_h = max_j cos(v_h, learned_j[h])`), the best combination
    `sum_h a_h u_h` has cosine `sqrt(sum_h ||v_h||^2 c_h^2) / ||v||` (closed form: the
    `u_h` are orthogonal, living in different heads). It equals the MMCS term for a
    single-head feature and shows whether a multi-head feature is recovered as pieces
    split over heads (as a block-diagonal SAE must).
    """
    true_heads = true.float().unflatten(-1, (n_heads, -1))  # [n_true, H, d_head]
    learned_heads = learned.float().unflatten(-1, (n_heads, -1))  # [n_learned, H, d_head]
    squared = torch.zeros(true.shape[0])
    for head in range(n_heads):
        best = max_cosine_per_feature(true_heads[:, head], learned_heads[:, head]).clamp(min=0)
        squared += true_heads[:, head].pow(2).sum(dim=1) * best.pow(2)
    return squared.sqrt() / true.float().norm(dim=1).clamp(min=1e-8)


def dictionary_mmcs_matrix(dictionaries: list[torch.Tensor]) -> torch.Tensor:
    """`[n, n]`: entry `(i, j)` is `mmcs(dictionaries[i], dictionaries[j])`, i.e. how well
    dictionary j reproduces the rows of dictionary i (1 on the diagonal)."""
    return torch.tensor([[mmcs(a, b) for b in dictionaries] for a in dictionaries])
