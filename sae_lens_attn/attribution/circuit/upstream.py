"""Value-side circuit attribution: which upstream components feed a feature.

With the attention pattern and the ln1 scale frozen, feature j's pre-activation at
destination q is linear in the residual stream at every source position k:

    pre_j = sum_{k,h} A[h,q,k] * s * (ln1(resid[k]) @ W_V[h] + b_V[h]) @ W_enc[h-slice, j]
            - b_dec @ W_enc[:, j] + b_enc[j]

(`s` the SAE's input scaling at q, see `encoder_terms`). Writing ln1(resid[k]) as the sum
of the layer's input components (`components`) plus the ln1 bias splits each DFA
term `dfa[k, h]` exactly into one term per component, plus `ln1.b` and `b_V`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from sae_lens_attn.attribution.circuit.encoder import EncoderTerms, encoder_terms

if TYPE_CHECKING:
    from sae_lens_attn.attribution.circuit.context import CircuitContext

VALUE_BIAS_LABELS = ("ln1.b", "b_V")


@dataclass(frozen=True)
class ValueSideAttribution:
    """Feature `feature`'s pre-activation at `destination`, split by source and component.

    `terms [n_terms, pos, n_heads]`: term `labels[t]` through the layout's head `heads[i]`
    from source position `pos`; the last two labels are the per-(source, head) biases
    `ln1.b` and `b_V`. `terms.sum(0)` is the DFA `[pos, n_heads]`, and
    `terms.sum() + centring + b_enc == pre_activation` (the SAE's own value; the
    difference is `closure_error`).
    """

    feature: int
    destination: int
    layer: int
    heads: tuple[int, ...]
    labels: list[str]
    terms: torch.Tensor
    centring: float
    b_enc: float
    pre_activation: float

    @property
    def dfa(self) -> torch.Tensor:
        """`[pos, n_heads]`: the DFA term of each (source, head)."""
        return self.terms.sum(0)

    @property
    def closure_error(self) -> float:
        """SAE pre-activation minus the sum of all parts (zero up to float rounding)."""
        return self.pre_activation - (self.terms.sum().item() + self.centring + self.b_enc)

    def top_sources(self, k: int) -> list[int]:
        """The `k` source positions with the largest |DFA summed over heads|."""
        by_source = self.dfa.sum(-1).abs()
        k = min(k, int((by_source > 0).sum()) or 1)
        return by_source.topk(k).indices.tolist()


def value_side_attribution(
    context: CircuitContext, feature: int, destination: int
) -> ValueSideAttribution:
    """Split feature `feature`'s pre-activation at `destination` into upstream components
    at every source position, through the frozen ln1 scale, W_V and the SAE encoder."""
    context.check_feature(feature)
    context.check_position(destination, "destination")
    layout, model = context.layout, context.model
    attn = model.blocks[layout.layer].attn
    heads = list(layout.heads)
    enc: EncoderTerms = encoder_terms(context.sae, context.sae_in[destination], feature)
    read = layout.split(enc.column)  # [n_heads, d_head]
    pattern = context.cache[f"blocks.{layout.layer}.attn.hook_pattern"][heads, destination]
    weight = pattern.T * enc.scale  # [pos, n_heads]
    with torch.no_grad():
        # the layout's heads of W_V, without a copy when it has them all
        W_V = attn.W_V if layout.uses_all_heads else attn.W_V[heads]
        residual_read = torch.einsum("hmd,hd->hm", W_V, read)  # [n_heads, d_model]
        components = torch.einsum("cpm,hm->cph", context.components.normalized, residual_read)
        ln_bias = (residual_read @ context.components.ln_bias).expand_as(weight)
        b_v = (attn.b_V[heads] * read).sum(-1).expand_as(weight)
        terms = torch.cat([components, ln_bias[None], b_v[None]]) * weight
    return ValueSideAttribution(
        feature=feature,
        destination=destination,
        layer=layout.layer,
        heads=tuple(heads),
        labels=[*context.components.labels, *VALUE_BIAS_LABELS],
        terms=terms.detach(),
        centring=enc.centring,
        b_enc=enc.b_enc,
        pre_activation=context.pre_acts_of(feature)[destination].item(),
    )
