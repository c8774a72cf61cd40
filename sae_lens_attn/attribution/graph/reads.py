"""How a target node reads the residual stream, with attention patterns and LayerNorm
scales frozen at the prompt.

An attention SAE feature `f` of layer `l` at destination `q` (block-diagonal or dense,
heads `H` of its layout) has pre-activation

    pre = sum_{h in H} sum_k A[h,q,k] * (ln1(resid[k]) @ W_V[h] + b_V[h]) @ W_enc[h-slice, f]
          - b_dec @ W_enc[:, f] + b_enc[f]

(`circuit.upstream` splits the same sum by residual component). With the ln1 scale frozen,
`ln1(resid[k]) = centre(resid[k]) / scale[k] * w + b` is linear in what each node wrote at
`k`, so the edge from node `n` (write `w_n` at position `k_n`) is exact:

    edge[n] = sum_h A[h,q,k_n] * (centre(w_n) / scale[k_n] * w) @ W_V[h] @ W_enc[h-slice, f]

and its per-head terms are the head shares. Everything else (the layers' constants, ln1.b,
b_V, the centring, b_enc) is the target's bias. A logit `t` at position `q` reads only
position `q`, through the frozen final LayerNorm and `W_U[:, t]`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from sae_lens_attn.attribution._sae_weights import encoder_columns

if TYPE_CHECKING:
    from transformer_lens import ActivationCache, HookedTransformer

    from sae_lens_attn.attribution.graph.nodes import LayerFeatures, NodeSet

CENTRED_NORMS = ("LN", "LNPre")


@dataclass(frozen=True)
class FrozenNorm:
    """A LayerNorm with its scale frozen: `x -> centre(x) / scale[pos] * weight + bias`."""

    scale: torch.Tensor  # [pos]
    weight: torch.Tensor  # [d_model]
    bias: torch.Tensor  # [d_model]
    centred: bool

    def linear(self, writes: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The linear part applied to `writes [n, d_model]` written at `positions [n]`."""
        if self.centred:
            writes = writes - writes.mean(-1, keepdim=True)
        return writes / self.scale[positions, None] * self.weight


def frozen_norm(
    model: HookedTransformer, cache: ActivationCache, name: str, n_pos: int
) -> FrozenNorm:
    """The LayerNorm `name` (`blocks.L.ln1` or `ln_final`) frozen at the cached prompt."""
    module = getattr(model, name, None) if "." not in name else model.get_submodule(name)
    d_model = model.cfg.d_model
    scale_name = f"{name}.hook_scale"
    scale = (
        cache[scale_name][:n_pos, 0].detach().float()
        if scale_name in cache.cache_dict
        else torch.ones(n_pos)
    )
    weight = getattr(module, "w", None)
    bias = getattr(module, "b", None)
    return FrozenNorm(
        scale=scale,
        weight=weight.detach().float() if isinstance(weight, torch.Tensor) else torch.ones(d_model),
        bias=bias.detach().float() if isinstance(bias, torch.Tensor) else torch.zeros(d_model),
        centred=model.cfg.normalization_type in CENTRED_NORMS,
    )


@dataclass(frozen=True)
class TargetRows:
    """Incoming edges of `T` targets: `rows [T, n_sources]` (the first `n_sources` nodes),
    `bias [T]`, and `value [T]`, the model's own pre-activation (or logit).
    `rows.sum(1) + bias == value` up to float rounding (`closure`)."""

    rows: torch.Tensor
    bias: torch.Tensor
    value: torch.Tensor

    @property
    def closure(self) -> torch.Tensor:
        """`[T]`: value minus the sum of edges and bias."""
        return self.value - (self.rows.sum(1) + self.bias)


class AttentionReads:
    """Feature targets `features [T]` at destinations `positions [T]` of one attention
    layer's SAE, read through frozen patterns and ln1."""

    def __init__(
        self,
        model: HookedTransformer,
        cache: ActivationCache,
        feats: LayerFeatures,
        positions: torch.Tensor,
        features: torch.Tensor,
    ) -> None:
        layout = feats.layout
        self.layer = layout.layer
        self.heads = list(layout.heads)
        n_pos = feats.acts.shape[0]
        attn = model.blocks[self.layer].attn
        self.W_V = attn.W_V[self.heads].detach().float()  # [H, d_model, d_head]
        self.b_V = attn.b_V[self.heads].detach().float()  # [H, d_head]
        self.norm = frozen_norm(model, cache, f"blocks.{self.layer}.ln1", n_pos)
        pattern = cache[f"blocks.{self.layer}.attn.hook_pattern"].detach().float()
        self.pattern = pattern[self.heads][:, positions]  # [H, T, pos]
        columns = encoder_columns(feats.sae, features.to(feats.sae.b_dec.device)).detach()
        self.encoder = layout.split(columns.T.float())  # [T, H, d_head]
        sae = feats.sae
        centring = -(sae.b_dec.detach().float() @ columns.float()) * float(
            sae.cfg.apply_b_dec_to_input
        )
        self.fixed = centring + sae.b_enc.detach().float()[features]
        self.value = feats.pre_acts[positions, features].float()

    def values(self, writes: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """`[n, H, d_head]`: what `writes [n, d_model]` at `positions` add to each head's
        value vector at their position."""
        return torch.einsum("nm,hmd->nhd", self.norm.linear(writes, positions), self.W_V)

    def rows(self, nodes: NodeSet, constant: torch.Tensor) -> TargetRows:
        """Edges from the nodes this layer reads (`nodes.prefix(layer)`), and the bias from
        `constant [pos, d_model]` (the layers' constant writes), ln1.b, b_V, b_dec, b_enc."""
        end = nodes.prefix(self.layer)
        source_pos = nodes.position[:end]
        values = self.values(nodes.writes[:end], source_pos)  # [P, H, d_head]
        rows = torch.zeros(self.encoder.shape[0], end)
        for i in range(len(self.heads)):
            rows += (self.encoder[:, i] @ values[:, i].T) * self.pattern[i][:, source_pos]
        n_pos = constant.shape[0]
        fixed_values = self.values(constant, torch.arange(n_pos)) + (
            torch.einsum("m,hmd->hd", self.norm.bias, self.W_V) + self.b_V
        )  # [pos, H, d_head]
        bias = torch.einsum("thd,khd,htk->t", self.encoder, fixed_values, self.pattern[..., :n_pos])
        return TargetRows(rows, bias + self.fixed, self.value)

    def head_terms(
        self, targets: torch.Tensor, writes: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        """`[n, H]`: the edge from write `writes[i]` at `positions[i]` into target
        `targets[i]` (an index into this object's targets), one term per head."""
        values = self.values(writes, positions)
        terms = torch.einsum("nhd,nhd->nh", self.encoder[targets], values)
        return terms * self.pattern[:, targets, positions].T


def logit_rows(
    model: HookedTransformer,
    cache: ActivationCache,
    nodes: NodeSet,
    position: int,
    token: int,
    value: float,
) -> TargetRows:
    """The edges into logit `token` at `position` from every node (only those at
    `position` are non-zero: the direct path through the frozen final LayerNorm)."""
    n_pos = nodes.constant.shape[1]
    norm = frozen_norm(model, cache, "ln_final", n_pos)
    unembed = model.W_U[:, token].detach().float()
    at = nodes.position == position
    rows = torch.zeros(1, nodes.n_nodes)
    rows[0, at] = norm.linear(nodes.writes[at], nodes.position[at]) @ unembed
    constant = nodes.constant[-1][position : position + 1]
    bias = norm.linear(constant, torch.tensor([position])) @ unembed
    bias = bias + norm.bias @ unembed + model.b_U[token].detach().float()
    return TargetRows(rows, bias.reshape(1), torch.tensor([value]))
