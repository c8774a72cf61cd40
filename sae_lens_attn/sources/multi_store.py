"""`MultiHookZActivationsStore`: SAELens's multi-hook `ActivationsStore` fed by several
`HookZSource`s from one forward pass.

SAELens's multi-hook store (`ActivationsStore.from_config_multi_hook`) keys its batches by
hook name and asks every SAE at a hook to take the same input. Here the keys are
*streams*, one per distinct source (layer, heads, per-head norm; `stream_key`), so SAEs
on different head subsets of one layer train side by side. One forward pass, stopped
right after the deepest layer's hook_z (`capture_hook_z`), feeds every stream; the
shuffling buffer, batching and special-token filtering stay upstream's, with one shared
permutation for all streams.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from sae_lens.training.activations_store import ActivationsStore, _get_input_token_device
from typing_extensions import override

from sae_lens_attn.sources.hook_z import HookZSource, capture_hook_z


def stream_key(source: HookZSource) -> str:
    """The multi-hook store's key for a source: its hook name, plus its heads when they
    are a subset and `+per_head_norm` when it normalises, e.g.
    `blocks.1.attn.hook_z[3,0]+per_head_norm`."""
    layout = source.layout
    heads = "" if layout.uses_all_heads else "[" + ",".join(map(str, layout.heads)) + "]"
    return layout.hook_name + heads + ("+per_head_norm" if source.per_head_norm else "")


class MultiHookZActivationsStore(ActivationsStore):
    """A multi-hook `ActivationsStore` whose streams are `HookZSource`s.

    Made from the store SAELens's `MultiSAETrainingRunner` builds (`adopt`), so every
    setting of that store is upstream's own.
    """

    sources: dict[str, HookZSource]

    @classmethod
    def adopt(cls, store: ActivationsStore, sources: Mapping[str, HookZSource]) -> MultiHookZActivationsStore:
        """Turn a store built by `ActivationsStore.from_config_multi_hook` with the
        sources' stream keys as hook names into one reading the sources (in place)."""
        if store._hook_names is None or set(store._hook_names) != set(sources):
            raise ValueError(
                f"the store's hooks {store._hook_names} are not the sources' streams {sorted(sources)}"
            )
        store.__class__ = cls
        assert isinstance(store, cls)
        store.sources = dict(sources)
        return store

    @torch.no_grad()
    def raw_multi_hook_activations(self, batch_tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw hook_z of every stream: `[batch, pos]` -> `{key: [batch, pos', d_in]}`
        (`pos'` after `seqpos_slice`), float32 on the store's device, from one forward pass."""
        with torch.autocast(
            device_type=_get_input_token_device(self.model).type,
            dtype=torch.bfloat16,
            enabled=self.autocast_lm,
        ):
            z_by_layer = capture_hook_z(
                self.model,
                batch_tokens,
                {source.layout.layer for source in self.sources.values()},
                **self.model_kwargs,
            )
        return {
            key: source.layout.select(z_by_layer[source.layout.layer])[:, slice(*self.seqpos_slice)]
            .to(self.device, torch.float32)
            for key, source in self.sources.items()
        }

    @override
    @torch.no_grad()
    def get_multi_hook_activations(self, batch_tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """What the SAEs train on: each stream's activations, scaled per head if its
        source normalises."""
        raw = self.raw_multi_hook_activations(batch_tokens)
        return {key: self.sources[key].normalize(acts) for key, acts in raw.items()}

    @torch.no_grad()
    def estimate_per_head_scales(self, n_batches: int) -> None:
        """Estimate the per-head scale of every normalising source that has none yet,
        from the same `n_batches` LLM batches (consumed, as a single run consumes them)."""
        pending = {
            key: source
            for key, source in self.sources.items()
            if source.per_head_norm and source.per_head_scale is None
        }
        if not pending:
            return
        samples: dict[str, list[torch.Tensor]] = {key: [] for key in pending}
        for _ in range(n_batches):
            raw = self.raw_multi_hook_activations(self.get_batch_tokens())
            for key in pending:
                samples[key].append(raw[key].flatten(0, 1))
        for key, source in pending.items():
            source.estimate_per_head_scale(torch.cat(samples[key]))
