"""SAE training configs sized from a head layout (`d_in`, `d_sae`, `n_heads`)."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY
from sae_lens.saes.sae import TrainingSAEConfig

from sae_lens_attn.plugins import register_architectures_with_sae_lens
from sae_lens_attn.sources.head_layout import HeadLayout
from sae_lens_attn.sources.hook_z import HookZSource

DEFAULT_HEAD_DIMS_PER_FEATURE = 4  # default per-head TopK: k = d_head // 4


def _layout_of(source_or_layout: HookZSource | HeadLayout) -> HeadLayout:
    return source_or_layout.layout if isinstance(source_or_layout, HookZSource) else source_or_layout


def sae_config_for(
    source_or_layout: HookZSource | HeadLayout,
    architecture: str,
    expansion_factor: int = 8,
    d_sae: int | None = None,
    **config_kwargs: Any,
) -> TrainingSAEConfig:
    """The SAELens training config of `architecture` for this layout's input.

    `d_in = n_heads * d_head`; `d_sae = expansion_factor * d_in` unless given. A config
    with an `n_heads` field (head-aware architectures such as `block_diagonal`) gets the
    layout's head count. `reshape_activations="hook_z"` when the layout covers all heads,
    so the saved SAE splices into `HookedSAETransformer` at hook_z. Other keyword
    arguments are config fields (`l1_coefficient`, `k`, ...); a head-aware config with
    `activation="topk"` and no `k` gets `default_k_per_head(d_head)`.
    """
    layout = _layout_of(source_or_layout)
    if architecture not in SAE_TRAINING_CLASS_REGISTRY:
        register_architectures_with_sae_lens()  # no-op unless the .pth autoload was skipped
    if architecture not in SAE_TRAINING_CLASS_REGISTRY:
        raise ValueError(
            f"unknown architecture {architecture!r}; SAELens knows "
            f"{sorted(SAE_TRAINING_CLASS_REGISTRY)}"
        )
    config_class = SAE_TRAINING_CLASS_REGISTRY[architecture][1]
    field_names = {field.name for field in fields(config_class)}
    unknown = sorted(set(config_kwargs) - field_names)
    if unknown:
        raise ValueError(
            f"{config_class.__name__} has no field(s) {unknown}; valid fields: {sorted(field_names)}"
        )
    if "n_heads" in field_names:
        config_kwargs["n_heads"] = layout.n_heads
        if config_kwargs.get("activation") == "topk" and config_kwargs.get("k") is None:
            config_kwargs["k"] = default_k_per_head(layout.d_head)
    config_kwargs.setdefault(
        "reshape_activations", "hook_z" if layout.uses_all_heads else "none"
    )
    return config_class(
        d_in=layout.d_in,
        d_sae=d_sae if d_sae is not None else expansion_factor * layout.d_in,
        **config_kwargs,
    )


def default_k_per_head(d_head: int) -> int:
    """Per-head TopK's k when none is given: `d_head // 4` features per head and token
    (at least 1), so L0 is `d_in / 4` (32 on the embedded model's 4 heads x 32). Picked
    over d_head // 8, which fell short of 0.90 CE loss recovered on the embedded model in
    a one-off run; `benchmarks/frontier.py` measures the default (docs/frontier.md)."""
    return max(1, d_head // DEFAULT_HEAD_DIMS_PER_FEATURE)


def block_diagonal_config_for(
    source_or_layout: HookZSource | HeadLayout,
    expansion_factor: int = 8,
    d_sae: int | None = None,
    **config_kwargs: Any,
) -> TrainingSAEConfig:
    """`BlockDiagonalTrainingSAEConfig` for this layout: one block per head, `n_heads`
    from the layout, `d_sae = expansion_factor * d_in` unless given (it must split evenly
    over the heads). Other keyword arguments are config fields (`activation`, `k`,
    `l1_coefficient`, ...)."""
    return sae_config_for(
        source_or_layout, "block_diagonal", expansion_factor, d_sae, **config_kwargs
    )
