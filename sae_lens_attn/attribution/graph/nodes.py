"""The nodes of an attribution graph and what each writes into the residual stream.

With one SAE on an attention layer's hook_z, the layer's output at position k is
`sum_f a_f W_dec[f] W_O + (b_dec W_O + b_O) + error`: one node per active feature, one
error node (what the SAE misses, plus the heads outside its layout), and a constant. A
layer without an SAE is one error node per position (its whole `hook_attn_out`). An MLP
output is one node per position (the MLP is not linear, so these are leaves), or, with an
MLP SAE or a transcoder on it (`mlp`), `sum_f a_f W_dec[f] + b_dec + error`: its active
features, one MLP error node per position and a constant. The token (and positional)
embeddings are the input nodes. Their writes, plus the constants,
sum to the residual stream at every position: `check_decomposition` tests it.

Node order is the one circuit-tracer's adjacency uses within a layer (features, then
errors), with layers stacked bottom-up after the embeddings, so that every node a layer's
attention reads is a prefix of the list (`NodeSet.prefix`), and so is every node a
layer's transcoder reads (`NodeSet.mid_prefix`: up to the layer's attention nodes).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from sae_lens_attn.attribution._sae_weights import decoder_rows
from sae_lens_attn.attribution.circuit.split import sae_input
from sae_lens_attn.sources.head_layout import HeadLayout

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformer_lens import ActivationCache, HookedTransformer

# "feature": an attention SAE feature; "mlp_feature": an MLP SAE feature (a leaf);
# "transcoder": a transcoder feature (it has incoming edges); "mlp_error": what an MLP SAE
# or transcoder misses; "mlp": a whole MLP output (no MLP SAE or transcoder on its layer)
KINDS = (
    "embedding",
    "position",
    "feature",
    "attn_error",
    "mlp",
    "logit",
    "mlp_feature",
    "transcoder",
    "mlp_error",
)
ERROR_KINDS = ("attn_error", "mlp", "mlp_error")  # circuit-tracer's error nodes
INPUT_KINDS = ("embedding", "position")  # circuit-tracer's token nodes
FEATURE_KINDS = ("feature", "mlp_feature", "transcoder")


@dataclass(frozen=True)
class ActivePre:
    """The pre-activations `[pos, d_sae]` of one SAE at its active entries only (a graph's
    targets are active features), kept as sorted flat keys `pos * d_sae + feature` and
    their values: a dense copy per layer would cost `pos x d_sae` floats for a few hundred
    numbers."""

    keys: torch.Tensor
    values: torch.Tensor
    d_sae: int

    @classmethod
    def of(cls, pre: torch.Tensor, acts: torch.Tensor) -> ActivePre:
        """From dense `pre`, `acts` `[pos, d_sae]` (active: `acts != 0`)."""
        keys = (acts != 0).flatten().nonzero().flatten()
        return cls(keys, pre.flatten()[keys].float(), pre.shape[1])

    def at(self, positions: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """`[n]`: the pre-activations at `(positions[i], features[i])`; NaN where the
        feature is not active (so that a closure check fails loudly)."""
        keys = positions.long() * self.d_sae + features.long().to(positions.device)
        if not len(self.keys):
            return torch.full(keys.shape, float("nan"))
        index = torch.searchsorted(self.keys, keys).clamp(max=len(self.keys) - 1)
        hit = self.keys[index] == keys
        return torch.where(hit, self.values[index], torch.tensor(float("nan")))


@dataclass(frozen=True)
class LayerFeatures:
    """One attention SAE's view of one prompt: `acts [pos, d_sae]` and `pre_acts`, the
    pre-activations of the active ones."""

    sae: SAE
    layout: HeadLayout
    sae_in: torch.Tensor
    pre_acts: ActivePre
    acts: torch.Tensor


@dataclass(frozen=True)
class MlpFeatures:
    """One MLP SAE's or transcoder's view of one prompt: `acts [pos, d_sae]` and
    `pre_acts`, those of the active ones; `hook_name` is what it reads."""

    sae: SAE
    layer: int
    transcoder: bool
    hook_name: str
    pre_acts: ActivePre
    acts: torch.Tensor

    @property
    def reads_ln2(self) -> bool:
        """True when it reads ln2's output (frozen scale), not `hook_resid_mid` itself."""
        return self.hook_name.endswith("ln2.hook_normalized")


@dataclass(frozen=True)
class NodeSet:
    """Every node of one prompt, in order (`n_nodes` long columns).

    `kind[n]` indexes `KINDS`; `layer[n]` (-1 for embeddings), `position[n]`, `index[n]`
    (feature index, or the token id for an embedding node, else -1), `activation[n]`
    (feature activation, else the norm of the write), `head[n]` and `head_share[n]` (the
    head holding most of a feature's decoder norm and its share, 1 for block-diagonal
    SAEs; -1 and 0 for other nodes); `writes [n_nodes, d_model]` what
    each node adds to the residual stream at its position. `constant [n_layers + 1, pos,
    d_model]`: what the layers below `l` add that belongs to no node (SAE `b_dec W_O`,
    `b_O`, an MLP SAE's or transcoder's `b_dec`), summed over those layers. `ends[l]`:
    nodes before this index are read by layer `l`'s attention (`ends[n_layers]`: every
    node). `mid_constant [n_layers, pos, d_model]` and `mid_ends[l]`: the same at layer
    `l`'s `hook_resid_mid` (below its MLP), what its transcoder reads.
    """

    kind: torch.Tensor
    layer: torch.Tensor
    position: torch.Tensor
    index: torch.Tensor
    activation: torch.Tensor
    head: torch.Tensor
    head_share: torch.Tensor
    writes: torch.Tensor
    constant: torch.Tensor
    ends: tuple[int, ...]
    mid_constant: torch.Tensor
    mid_ends: tuple[int, ...]

    @property
    def n_nodes(self) -> int:
        return self.kind.shape[0]

    def prefix(self, layer: int) -> int:
        """How many nodes layer `layer`'s attention reads (`layer = n_layers`: all)."""
        return self.ends[layer]

    def mid_prefix(self, layer: int) -> int:
        """How many nodes layer `layer`'s MLP (its transcoder) reads."""
        return self.mid_ends[layer]

    def of_kind(self, *kinds: str) -> torch.Tensor:
        """`[n_nodes]` bool: nodes of the given kinds."""
        codes = torch.tensor([KINDS.index(k) for k in kinds])
        return torch.isin(self.kind, codes)


def layer_features(sae: SAE, model: HookedTransformer, cache: ActivationCache) -> LayerFeatures:
    """Encode the single-prompt `cache`'s hook_z with `sae` (pre-activations from its own
    `hook_sae_acts_pre`, as `circuit.context` does)."""
    layout = HeadLayout.from_sae(sae, model)
    z = cache[layout.hook_name].detach()
    pre, post = encode(sae, sae_input(sae, z, layout))
    return LayerFeatures(sae, layout, layout.select(z), pre, post)


def encode(sae: SAE, sae_in: torch.Tensor) -> tuple[ActivePre, torch.Tensor]:
    """`sae`'s pre-activations (where active) and activations `[pos, d_sae]` on `sae_in
    [pos, ...]`, from its own `hook_sae_acts_pre` and `hook_sae_acts_post` (what its
    `encode` computes)."""
    captured: dict[str, torch.Tensor] = {}
    hooks = [
        (f"hook_sae_acts_{key}", lambda act, hook, key=key: captured.__setitem__(key, act))
        for key in ("pre", "post")
    ]
    with torch.no_grad():
        sae.run_with_hooks(sae_in, fwd_hooks=hooks)
    n_pos = sae_in.shape[0]
    pre, post = (captured.pop(key).detach().reshape(n_pos, -1) for key in ("pre", "post"))
    return ActivePre.of(pre, post), post


def build_nodes(
    model: HookedTransformer,
    cache: ActivationCache,
    tokens: torch.Tensor,
    features: Mapping[int, LayerFeatures],
    last_position: int | None = None,
    mlp_features: Mapping[int, MlpFeatures] | None = None,
) -> NodeSet:
    """The nodes of prompt `tokens [pos]` (`cache` without a batch dimension) at positions
    up to `last_position` (default: all), with `features[l]` for every layer that has an
    attention SAE and `mlp_features[l]` for every layer with an MLP SAE or transcoder."""
    mlp_features = mlp_features or {}
    last = tokens.shape[0] - 1 if last_position is None else last_position
    d_model, n_layers = model.cfg.d_model, model.cfg.n_layers
    positions = torch.arange(last + 1)
    columns: list[_Column] = []
    tokens_written = cache["hook_embed"][: last + 1].detach()
    columns.append(
        _Column.per_position("embedding", -1, tokens[: last + 1].long().cpu(), tokens_written)
    )
    if "hook_pos_embed" in cache.cache_dict:
        pos_written = cache["hook_pos_embed"][: last + 1].detach()
        columns.append(_Column.per_position("position", -1, positions, pos_written))
    constant = torch.zeros(n_layers + 1, last + 1, d_model)
    mid_constant = torch.zeros(n_layers, last + 1, d_model)
    ends = [sum(len(c.position) for c in columns)]
    mid_ends = []
    for layer in range(n_layers):
        attn_out = cache[f"blocks.{layer}.hook_attn_out"][: last + 1].detach()
        layer_constant = torch.zeros(last + 1, d_model)
        error = attn_out
        if layer in features:
            feature_writes, fixed = _feature_column(model, features[layer], last)
            columns.append(feature_writes)
            layer_constant = fixed.expand(last + 1, d_model)
            error = attn_out - layer_constant - feature_writes.by_position(last + 1)
        columns.append(
            _Column.per_position("attn_error", layer, -torch.ones_like(positions), error)
        )
        mid_constant[layer] = constant[layer] + layer_constant
        mid_ends.append(sum(len(c.position) for c in columns))
        mlp_constant = torch.zeros(d_model)
        if not model.cfg.attn_only:
            mlp_out = cache[f"blocks.{layer}.hook_mlp_out"][: last + 1].detach().float()
            kind = "mlp"
            if layer in mlp_features:
                mlp_writes = _mlp_column(mlp_features[layer], last)
                columns.append(mlp_writes)
                mlp_constant = mlp_features[layer].sae.b_dec.detach().float()
                mlp_out = mlp_out - mlp_constant - mlp_writes.by_position(last + 1)
                kind = "mlp_error"
            columns.append(_Column.per_position(kind, layer, -torch.ones_like(positions), mlp_out))
        constant[layer + 1] = mid_constant[layer] + mlp_constant
        ends.append(sum(len(c.position) for c in columns))
    return NodeSet(
        kind=torch.cat([torch.full_like(c.position, KINDS.index(c.kind)) for c in columns]),
        layer=torch.cat([torch.full_like(c.position, c.layer) for c in columns]),
        position=torch.cat([c.position for c in columns]),
        index=torch.cat([c.index for c in columns]),
        activation=torch.cat([c.activation for c in columns]).float(),
        head=torch.cat([c.heads()[0] for c in columns]),
        head_share=torch.cat([c.heads()[1] for c in columns]).float(),
        writes=torch.cat([c.writes for c in columns]).float(),
        constant=constant,
        ends=tuple(ends),
        mid_constant=mid_constant,
        mid_ends=tuple(mid_ends),
    )


@dataclass(frozen=True)
class _Column:
    """Nodes of one kind and layer, one per entry of `position`."""

    kind: str
    layer: int
    position: torch.Tensor
    index: torch.Tensor
    activation: torch.Tensor
    writes: torch.Tensor
    head: torch.Tensor | None = None
    head_share: torch.Tensor | None = None

    @classmethod
    def per_position(
        cls, kind: str, layer: int, index: torch.Tensor, writes: torch.Tensor
    ) -> _Column:
        """One node per position `0..len(writes)-1`, its write `writes [pos, d_model]` and
        its activation the write's norm."""
        return cls(kind, layer, torch.arange(len(writes)), index, writes.norm(dim=-1), writes)

    def by_position(self, n_pos: int) -> torch.Tensor:
        """`[n_pos, d_model]`: the writes summed at each position."""
        return torch.zeros(n_pos, self.writes.shape[1]).index_add_(
            0, self.position, self.writes.float()
        )

    def heads(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.head is None:
            return -torch.ones_like(self.position), torch.zeros(len(self.position))
        return self.head, self.head_share


def _feature_column(
    model: HookedTransformer, feats: LayerFeatures, last: int
) -> tuple[_Column, torch.Tensor]:
    """Active features at positions `0..last`, and the layer's constant write
    `b_dec W_O + b_O` `[d_model]`."""
    layout = feats.layout
    acts = feats.acts[: last + 1]
    position, feature = (acts > 0).nonzero(as_tuple=True)
    attn = model.blocks[layout.layer].attn
    W_O = attn.W_O[list(layout.heads)].detach()  # [n_heads, d_head, d_model]
    with torch.no_grad():
        rows = layout.split(decoder_rows(feats.sae, feature).float())  # [n, n_heads, d_head]
        activation = acts[position, feature].float()
        writes = torch.einsum("nhd,hdm->nm", rows * activation[:, None, None], W_O)
        fixed = torch.einsum("hd,hdm->m", layout.split(feats.sae.b_dec.detach().float()), W_O)
        norms = rows.norm(dim=-1)
        share, head = (norms / norms.sum(-1, keepdim=True).clamp(min=1e-30)).max(-1)
    heads = torch.tensor(layout.heads)[head]
    column = _Column("feature", layout.layer, position, feature, activation, writes, heads, share)
    return column, fixed + attn.b_O.detach()


def _mlp_column(feats: MlpFeatures, last: int) -> _Column:
    """Active MLP SAE or transcoder features at positions `0..last`: each writes
    `a_f W_dec[f]` into the residual stream."""
    acts = feats.acts[: last + 1]
    position, feature = (acts > 0).nonzero(as_tuple=True)
    activation = acts[position, feature].float()
    writes = feats.sae.W_dec.detach()[feature].float() * activation[:, None]
    kind = "transcoder" if feats.transcoder else "mlp_feature"
    return _Column(kind, feats.layer, position, feature, activation, writes)


def check_decomposition(
    nodes: NodeSet, cache: ActivationCache, layer: int, mid: bool = False
) -> float:
    """Max |sum of the writes below `layer` + constant - resid_pre[layer]|: zero up to float
    rounding (`layer = n_layers` checks the final residual stream; `mid` checks layer
    `layer`'s `hook_resid_mid`, what its transcoder reads)."""
    n_pos = nodes.constant.shape[1]
    end = nodes.mid_prefix(layer) if mid else nodes.prefix(layer)
    total = torch.zeros_like(nodes.constant[0]).index_add_(
        0, nodes.position[:end], nodes.writes[:end]
    ) + (nodes.mid_constant[layer] if mid else nodes.constant[layer])
    n_layers = nodes.constant.shape[0] - 1
    name = (
        f"blocks.{layer}.hook_resid_mid"
        if mid
        else f"blocks.{layer}.hook_resid_pre"
        if layer < n_layers
        else f"blocks.{n_layers - 1}.hook_resid_post"
    )
    return (total - cache[name][:n_pos]).abs().max().item()
