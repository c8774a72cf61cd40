"""Per-head evaluation of a hook_z SAE: explained variance, CE loss recovered, L0 and dead
share for each head the SAE reads.

For head h (its slice `x[..., h*d_head:(h+1)*d_head]` of the SAE input):

- **explained variance**: `1 - sum ||x_h - x_hat_h||^2 / sum ||x_h - mean(x_h)||^2` over the
  evaluation tokens, SAELens's formula (`sae_lens.evals.ExplainedVarianceCalculator`, one
  per head). The overall explained variance is the heads' variance-weighted mean, so with
  heads of equal variance it is their plain mean.
- **CE loss recovered**: only head h's hook_z is replaced by its slice of the SAE's
  reconstruction (the other heads keep their true output), against zero-ablating head h
  alone: `(ce_ablated_h - ce_spliced_h) / (ce_ablated_h - ce_clean)`. 1: the
  reconstruction is as good as the head; 0: as bad as removing it.
- **L0**: mean number of active features per token that belong to head h. A
  block-diagonal SAE's feature belongs to the head of its block; a dense SAE's to the head
  holding most of its decoder norm (`sae_head_attribution`, as the taxonomy's `head`; a
  zero decoder row to the first head), so every feature belongs to exactly one head and
  the heads' L0s add up to the SAE's L0. (The demo's older per-head L0 table splits a
  dense feature over heads by its decoder-norm fractions instead.)
- **dead share**: of the features belonging to head h, the share that never fire on N
  held-out tokens (`sae_lens_attn.dead`: the evaluation tokens, or a larger count passed
  in); below `DEAD_TOKENS` tokens they are only "not seen in N tokens", and the printed
  column says which.

Pure functions take tensors; `evaluate_heads` runs the model. Unlike SAELens's evals this
also works for SAEs on a subset of heads (each head is spliced on its own).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from sae_lens.evals import ExplainedVarianceCalculator

from sae_lens_attn.attribution._sae_weights import is_block_diagonal
from sae_lens_attn.attribution.firing import encode_flat
from sae_lens_attn.attribution.heads import sae_head_attribution
from sae_lens_attn.dead import DEAD_TOKENS, DeadFeatures, dead_features

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

    from sae_lens_attn.sources.head_layout import HeadLayout

__all__ = [
    "METRICS",
    "eval_columns",
    "HEAD_EVALS_FILENAME",
    "HeadEvals",
    "ce_loss_recovered",
    "evaluate_heads",
    "feature_heads",
    "head_dead_share",
    "head_eval_cells",
    "head_evals_rows",
    "head_explained_variance",
    "head_l0",
    "sae_feature_heads",
    "splice_head",
]

METRICS = ("explained_variance", "ce_loss_recovered", "l0", "dead_share")
HEAD_EVALS_FILENAME = "head_evals.json"  # `HeadEvals.to_dict()`, beside a trained SAE


def feature_heads(head_share: torch.Tensor) -> torch.Tensor:
    """`head_share [d_sae, n_heads]` (decoder-norm fractions) -> `[d_sae]` the head each
    feature belongs to (its largest fraction)."""
    return head_share.argmax(dim=1)


def sae_feature_heads(sae: SAE, n_heads: int) -> torch.Tensor:
    """`[d_sae]` the head each feature of `sae` belongs to: its block for a block-diagonal
    SAE (even with a zero decoder row), else `feature_heads` of its decoder fractions."""
    if is_block_diagonal(sae):
        return torch.arange(sae.cfg.d_sae) // (sae.cfg.d_sae // n_heads)
    return feature_heads(sae_head_attribution(sae, n_heads).float().cpu())


def head_l0(active: torch.Tensor, owner: torch.Tensor, n_heads: int) -> torch.Tensor:
    """`active [N, d_sae]` bool, `owner [d_sae]` -> `[n_heads]` mean active features per
    token belonging to each head (sums to the overall L0)."""
    per_head = torch.zeros(active.shape[0], n_heads, dtype=torch.float64)
    per_head.index_add_(1, owner, active.double())
    return per_head.mean(dim=0)


def head_dead_share(fire_counts: torch.Tensor, owner: torch.Tensor, n_heads: int) -> torch.Tensor:
    """`fire_counts [d_sae]`, `owner [d_sae]` -> `[n_heads]` share of each head's features
    that never fire (0 for a head with no features); `DeadFeatures.per_head_share`."""
    return dead_features(fire_counts, 0).per_head_share(owner, n_heads)


def head_explained_variance(x: torch.Tensor, x_hat: torch.Tensor, n_heads: int) -> torch.Tensor:
    """`x, x_hat [N, n_heads * d_head]` -> `[n_heads]` explained variance of each head's
    slice (SAELens's `ExplainedVarianceCalculator` on the slice)."""
    calculators = _variance_calculators(n_heads)
    _add_batch(calculators, x, x_hat)
    return torch.tensor([c.compute() for c in calculators], dtype=torch.float64)


def _variance_calculators(n_heads: int) -> list[ExplainedVarianceCalculator]:
    return [ExplainedVarianceCalculator() for _ in range(n_heads)]


def _add_batch(
    calculators: list[ExplainedVarianceCalculator], x: torch.Tensor, x_hat: torch.Tensor
) -> None:
    for h, (part, part_hat) in enumerate(
        zip(x.chunk(len(calculators), dim=-1), x_hat.chunk(len(calculators), dim=-1), strict=True)
    ):
        calculators[h].add_batch(sae_output=part_hat, hidden_acts=part)


def ce_loss_recovered(
    clean: torch.Tensor, spliced: torch.Tensor, ablated: torch.Tensor
) -> torch.Tensor:
    """`(ablated - spliced) / (ablated - clean)`, elementwise (SAELens's `ce_loss_score`)."""
    return (ablated - spliced) / (ablated - clean)


def splice_head(z: torch.Tensor, head: int, replacement: torch.Tensor | None) -> torch.Tensor:
    """hook_z `z [batch, pos, n_model_heads, d_head]` with head `head` replaced by
    `replacement [batch, pos, d_head]` (zeros when None); a copy, the others untouched."""
    out = z.clone()
    out[:, :, head] = 0.0 if replacement is None else replacement.to(z.dtype)
    return out


def _finite(value: torch.Tensor | float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class HeadEvals:
    """Per head (`labels`, the SAE input's head order), each `[n_heads]`:
    `explained_variance`, `ce_loss_with_sae` (head spliced), `ce_loss_with_ablation` (head
    zeroed), `ce_loss_recovered`, `l0`, `dead_share`, `features` (features belonging to
    the head); `ce_loss_without_sae`, `n_tokens` and `dead_tokens` (the N that
    `dead_share` was counted on, `sae_lens_attn.dead`) are shared."""

    labels: list[str]
    explained_variance: torch.Tensor
    ce_loss_with_sae: torch.Tensor
    ce_loss_with_ablation: torch.Tensor
    ce_loss_without_sae: float
    ce_loss_recovered: torch.Tensor
    l0: torch.Tensor
    dead_share: torch.Tensor
    features: torch.Tensor
    n_tokens: int
    dead_tokens: int

    def to_dict(self) -> dict[str, dict[str, float]]:
        """`{"L1H0": {"explained_variance": ..., "ce_loss_recovered": ..., "l0": ...,
        "dead_share": ..., "dead_tokens": N, "features": n, "ce_loss_with_sae": ...,
        "ce_loss_with_ablation": ..., "ce_loss_without_sae": ...}, ...}`: strict JSON, a non-finite value (CE loss recovered when
        ablating the head changes nothing) is None."""
        return {
            label: {
                "explained_variance": _finite(self.explained_variance[i]),
                "ce_loss_recovered": _finite(self.ce_loss_recovered[i]),
                "l0": _finite(self.l0[i]),
                "dead_share": _finite(self.dead_share[i]),
                "dead_tokens": self.dead_tokens,
                "features": int(self.features[i]),
                "ce_loss_with_sae": _finite(self.ce_loss_with_sae[i]),
                "ce_loss_with_ablation": _finite(self.ce_loss_with_ablation[i]),
                "ce_loss_without_sae": _finite(self.ce_loss_without_sae),
            }
            for i, label in enumerate(self.labels)
        }

    def metrics(self) -> dict[str, float]:
        """Flat `{"L1H0/explained_variance": ..., ...}` of `METRICS`, for `saes.json` (None
        values left out)."""
        return {
            f"{label}/{name}": values[name]
            for label, values in self.to_dict().items()
            for name in METRICS
            if values[name] is not None
        }


def eval_columns(table: dict[str, dict[str, float | None]]) -> tuple[str, str, str, str]:
    """The printed header of `head_eval_cells` for `table` (`HeadEvals.to_dict()`): the
    last column names N and says "dead" or "not seen" (`sae_lens_attn.dead`)."""
    n_tokens = next(iter(table.values()), {}).get("dead_tokens")
    if n_tokens is None:  # written before N was recorded
        return ("EV", "CE rec.", "L0", "not seen")
    n_tokens = int(n_tokens)
    silent = "dead" if n_tokens >= DEAD_TOKENS else "not seen"
    return ("EV", "CE rec.", "L0", f"{silent} in {n_tokens:,} tok")


def head_eval_cells(values: dict[str, float | None]) -> tuple[str, str, str, str]:
    """One head's explained variance, CE loss recovered, L0 and dead share as text ("n/a"
    for None)."""
    formats = (
        ("explained_variance", "{:.3f}"),
        ("ce_loss_recovered", "{:.3f}"),
        ("l0", "{:.2f}"),
        ("dead_share", "{:.1%}"),
    )
    cells = tuple(
        "n/a" if values[name] is None else text.format(values[name]) for name, text in formats
    )
    return cells  # type: ignore[return-value]


def head_evals_rows(
    table: dict[str, dict[str, float]],
) -> tuple[list[tuple[str, ...]], tuple[str, ...]]:
    """`(rows, header)` for printing `HeadEvals.to_dict()` (or `families.json`'s
    `head_evals`): one row per head (EV: explained variance; CE rec.: CE loss recovered)."""
    rows = [
        (head, *head_eval_cells(values), str(values["features"])) for head, values in table.items()
    ]
    return rows, ("head", *eval_columns(table), "features")


def _reconstruct(
    sae: SAE, x: torch.Tensor, layout: HeadLayout
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(acts [..., d_sae], x_hat [..., d_in])` of flat SAE input `x [..., d_in]`, whether or
    not the SAE reshapes hook_z itself."""
    acts = encode_flat(sae, x, layout)
    x_hat = sae.decode(acts)
    return acts, x_hat.flatten(-2) if getattr(sae, "hook_z_reshaping_mode", False) else x_hat


@dataclass(frozen=True)
class _FromLayer:
    """The arguments of a forward pass of `batch` that starts at `layer`'s residual
    stream (computed once) and returns the loss per token."""

    args: tuple[torch.Tensor]
    kwargs: dict[str, Any]


def _from_layer(model: HookedTransformer, batch: torch.Tensor, layer: int) -> _FromLayer:
    """Run the embedding and the blocks below `layer` once for `batch [n, pos]`: the
    clean, spliced and ablated passes of every head share them (they differ only from the
    layer's hook_z on), so each pays only for the layers from `layer` up."""
    residual, _, pos_embed, mask = model.input_to_embed(batch)
    context = {"shortformer_pos_embed": pos_embed, "attention_mask": mask}
    if layer > 0:
        residual = model(residual, start_at_layer=0, stop_at_layer=layer, **context)
    kwargs = {"start_at_layer": layer, "tokens": batch, "return_type": "loss", "loss_per_token": True}
    return _FromLayer(args=(residual,), kwargs=kwargs | context)


@torch.no_grad()
def evaluate_heads(
    model: HookedTransformer,
    sae: SAE,
    layout: HeadLayout,
    tokens: torch.Tensor,
    batch_size: int = 8,
    dead: DeadFeatures | None = None,
) -> HeadEvals:
    """Per-head evals of `sae` (raw hook_z input, as SAELens's evals) on `tokens [n, pos]`:
    one clean pass and, per head, one pass with the head spliced and one with it zeroed,
    all from the layer's residual stream (the layers below run once per batch).
    Dead shares come from `dead` (counted on more held-out tokens, `count_firings`) when
    given, else from these tokens."""
    if tokens.ndim != 2 or tokens.shape[0] < 1 or tokens.shape[1] < 2:
        raise ValueError(f"expected tokens [n >= 1, pos >= 2], got {list(tokens.shape)}")
    n_heads, hook = layout.n_heads, layout.hook_name
    owner = sae_feature_heads(sae, n_heads)
    calculators = _variance_calculators(n_heads)
    fire_counts = torch.zeros(sae.cfg.d_sae, dtype=torch.long)
    l0_sum = torch.zeros(n_heads, dtype=torch.float64)
    loss = {
        "clean": 0.0,
        "spliced": torch.zeros(n_heads, dtype=torch.float64),
        "ablated": torch.zeros(n_heads, dtype=torch.float64),
    }
    n_tokens = n_predicted = 0
    for start in range(0, tokens.shape[0], batch_size):
        batch = tokens[start : start + batch_size].to(model.cfg.device)
        from_layer = _from_layer(model, batch, layout.layer)
        clean, cache = model.run_with_cache(
            *from_layer.args, names_filter=hook, **from_layer.kwargs
        )
        z = cache[hook]
        x = layout.select(z).to(sae.b_dec.device)
        acts, x_hat = _reconstruct(sae, x, layout)
        active = (acts != 0).flatten(0, -2).cpu()
        fire_counts += active.sum(dim=0)
        l0_sum += head_l0(active, owner, n_heads) * active.shape[0]
        _add_batch(calculators, x.flatten(0, -2), x_hat.flatten(0, -2).to(x.dtype))
        loss["clean"] += clean.sum().item()
        for i, head in enumerate(layout.heads):
            part = layout.split(x_hat)[..., i, :].to(z.device)
            for name, replacement in (("spliced", part), ("ablated", None)):

                def hook_fn(
                    activation: torch.Tensor, hook: Any, head=head, replacement=replacement
                ) -> torch.Tensor:
                    return splice_head(activation, head, replacement)

                per_token = model.run_with_hooks(
                    *from_layer.args, fwd_hooks=[(hook, hook_fn)], **from_layer.kwargs
                )
                loss[name][i] += per_token.sum().item()
        n_tokens += active.shape[0]
        n_predicted += clean.numel()
    dead = dead if dead is not None else dead_features(fire_counts, n_tokens)
    ce_clean = loss["clean"] / n_predicted
    spliced, ablated = loss["spliced"] / n_predicted, loss["ablated"] / n_predicted
    return HeadEvals(
        labels=layout.head_labels,
        explained_variance=torch.tensor([c.compute() for c in calculators], dtype=torch.float64),
        ce_loss_with_sae=spliced,
        ce_loss_with_ablation=ablated,
        ce_loss_without_sae=ce_clean,
        ce_loss_recovered=ce_loss_recovered(
            torch.tensor(ce_clean, dtype=torch.float64), spliced, ablated
        ),
        l0=l0_sum / n_tokens,
        dead_share=dead.per_head_share(owner, n_heads),
        features=torch.bincount(owner, minlength=n_heads),
        n_tokens=n_tokens,
        dead_tokens=dead.n_tokens,
    )
