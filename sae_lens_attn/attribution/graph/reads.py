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
position `q`, through the frozen final LayerNorm and `W_U[:, t]`. A transcoder feature `f`
of layer `l` at `q` reads only position `q` too, what is below layer `l`'s MLP (its
`hook_resid_mid`), through the frozen ln2 when it reads `ln2.hook_normalized`:

    pre = ln2(resid_mid[q]) @ W_enc[:, f] + b_enc[f],   edge[n] = (centre(w_n) / scale[q] * w) @ W_enc[:, f]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from sae_lens_attn.attribution._sae_weights import encoder_columns

if TYPE_CHECKING:
    from transformer_lens import ActivationCache, HookedTransformer

    from sae_lens_attn.attribution.graph.nodes import LayerFeatures, MlpFeatures, NodeSet

CENTRED_NORMS = ("LN", "LNPre")
POSITIONS_PER_CHUNK = 8  # source positions read per batched matmul (memory: T x 8 x d_model)


@dataclass(frozen=True)
class FrozenNorm:
    """A LayerNorm with its scale frozen: `x -> centre(x) / scale[pos] * weight + bias`."""

    scale: torch.Tensor  # [pos]
    weight: torch.Tensor  # [d_model]
    bias: torch.Tensor  # [d_model]
    centred: bool

    def linear(self, writes: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The linear part applied to `writes [n, d_model]` written at `positions [n]`."""
        out = writes - writes.mean(-1, keepdim=True) if self.centred else writes.clone()
        return out.div_(self.scale[positions, None]).mul_(self.weight)  # one new tensor

    @classmethod
    def identity(cls, d_model: int, n_pos: int) -> FrozenNorm:
        """No normalisation (what reads `hook_resid_mid` itself)."""
        return cls(torch.ones(n_pos), torch.ones(d_model), torch.zeros(d_model), False)


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
        # causal attention: no target reads a later position (targets come sorted by it)
        causal = model.cfg.attention_dir == "causal" and bool((positions.diff() >= 0).all())
        self.destinations = positions.contiguous() if causal else None
        columns = encoder_columns(feats.sae, features.to(feats.sae.b_dec.device)).detach()
        self.encoder = layout.split(columns.T.float())  # [T, H, d_head]
        # each target's read of the residual stream through each head: W_V[h] @ W_enc[h]
        self.reads = torch.einsum("thd,hmd->thm", self.encoder, self.W_V)  # [T, H, d_model]
        sae = feats.sae
        centring = -(sae.b_dec.detach().float() @ columns.float()) * float(
            sae.cfg.apply_b_dec_to_input
        )
        self.fixed = centring + sae.b_enc.detach().float()[features]
        self.value = feats.pre_acts.at(positions, features)

    def rows(self, nodes: NodeSet, constant: torch.Tensor) -> TargetRows:
        """Edges from the nodes this layer reads (`nodes.prefix(layer)`), and the bias from
        `constant [pos, d_model]` (the layers' constant writes), ln1.b, b_V, b_dec, b_enc."""
        end = nodes.prefix(self.layer)
        source_pos = nodes.position[:end]
        targets = self.encoder.shape[0]
        # each position's sources, as one slice of `order`
        order = source_pos.argsort(stable=True)
        counts = torch.bincount(source_pos, minlength=int(source_pos.max()) + 1).tolist()
        inputs = self.norm.linear(nodes.writes[:end], source_pos)  # [P, d_model], one copy
        rows = torch.zeros(targets, end)
        starts = [0, *torch.tensor(counts).cumsum(0).tolist()]
        for chunk in range(0, len(counts), POSITIONS_PER_CHUNK):
            span = range(chunk, min(chunk + POSITIONS_PER_CHUNK, len(counts)))
            # what each target reads at positions `span`: [T, len(span), d_model], one bmm
            weights = self.pattern[:, :, span.start : span.stop].permute(1, 2, 0)
            reads = torch.bmm(weights, self.reads)
            for k in span:
                if counts[k]:
                    # causal: only targets at or after k read position k
                    first = (
                        0
                        if self.destinations is None
                        else int(torch.searchsorted(self.destinations, k))
                    )
                    sources = order[starts[k] : starts[k + 1]]
                    block = inputs[sources]
                    rows[first:, sources] = reads[first:, k - span.start] @ block.T
        n_pos = constant.shape[0]
        fixed_inputs = self.norm.linear(constant, torch.arange(n_pos))  # [pos, d_model]
        per_head = torch.einsum("m,hmd->hd", self.norm.bias, self.W_V) + self.b_V
        terms = torch.einsum("thm,km->thk", self.reads, fixed_inputs)
        terms = terms + torch.einsum("thd,hd->th", self.encoder, per_head)[..., None]
        bias = torch.einsum("htk,thk->t", self.pattern[..., :n_pos], terms)
        return TargetRows(rows, bias + self.fixed, self.value)

    def head_terms(
        self, targets: torch.Tensor, writes: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        """`[n, H]`: the edge from write `writes[i]` at `positions[i]` into target
        `targets[i]` (an index into this object's targets), one term per head."""
        inputs = self.norm.linear(writes, positions)
        terms = torch.einsum("nhm,nm->nh", self.reads[targets], inputs)
        return terms * self.pattern[:, targets, positions].T


class TranscoderReads:
    """Transcoder features `features [T]` at `positions [T]` of one layer: each reads the
    residual stream at its own position, below the layer's MLP, through the frozen ln2
    (or none, for a transcoder on `hook_resid_mid`)."""

    def __init__(
        self,
        model: HookedTransformer,
        cache: ActivationCache,
        feats: MlpFeatures,
        positions: torch.Tensor,
        features: torch.Tensor,
    ) -> None:
        self.layer = feats.layer
        n_pos = feats.acts.shape[0]
        self.norm = (
            frozen_norm(model, cache, f"blocks.{self.layer}.ln2", n_pos)
            if feats.reads_ln2
            else FrozenNorm.identity(model.cfg.d_model, n_pos)
        )
        sae = feats.sae
        self.encoder = sae.W_enc.detach()[:, features].T.float()  # [T, d_model]
        self.positions = positions
        self.fixed = sae.b_enc.detach().float()[features]
        self.value = feats.pre_acts.at(positions, features)

    def rows(self, nodes: NodeSet) -> TargetRows:
        """Edges from the nodes at each target's position below the layer's MLP
        (`nodes.mid_prefix(layer)`); the bias from the constants, ln2.b and b_enc."""
        end = nodes.mid_prefix(self.layer)
        source_pos = nodes.position[:end]
        rows = torch.zeros(len(self.positions), end)
        for q in self.positions.unique().tolist():
            targets = (self.positions == q).nonzero().flatten()
            sources = (source_pos == q).nonzero().flatten()
            inputs = self.norm.linear(nodes.writes[sources], source_pos[sources])
            rows[targets[:, None], sources[None]] = self.encoder[targets] @ inputs.T
        constant = nodes.mid_constant[self.layer][self.positions]  # [T, d_model]
        fixed_inputs = self.norm.linear(constant, self.positions) + self.norm.bias
        bias = (fixed_inputs * self.encoder).sum(-1) + self.fixed
        return TargetRows(rows, bias, self.value)


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
