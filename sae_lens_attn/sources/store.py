"""`HookZActivationsStore`: SAELens's `ActivationsStore` fed by a `HookZSource`.

Everything SAELens's store does (dataset streaming, batching, special-token filtering,
the shuffling buffer, cached activations, checkpoint state) is inherited. Two methods
change: `get_activations` asks the source (stop-early forward, head selection) instead
of `run_with_cache`, and `get_raw_llm_batch` applies the source's per-head scale, so
live and cached activations are scaled alike and caches stay raw.
"""

from __future__ import annotations

from typing import Any

import torch
from sae_lens import LanguageModelSAERunnerConfig
from sae_lens.config import HfDataset
from sae_lens.training.activations_store import ActivationsStore, _get_input_token_device
from typing_extensions import override

from sae_lens_attn._upstream import disable_datasets_torchvision_formatting
from sae_lens_attn.sources.hook_z import HookZSource


class HookZActivationsStore(ActivationsStore):
    """An `ActivationsStore` whose activations come from a `HookZSource`.

    Build it with `from_source(source, cfg, override_dataset)`; `cfg.hook_name` must be
    the source's hook and `cfg.sae.d_in` its `d_in`.
    """

    source: HookZSource

    @classmethod
    def from_source(
        cls,
        source: HookZSource,
        cfg: LanguageModelSAERunnerConfig[Any],
        override_dataset: HfDataset | None = None,
    ) -> HookZActivationsStore:
        check_config_matches_source(cfg, source)
        disable_datasets_torchvision_formatting()  # the store formats its dataset as torch
        store = cls.from_config(source.model, cfg, override_dataset=override_dataset)
        assert isinstance(store, cls)
        store.source = source
        return store

    @override
    @torch.no_grad()
    def get_activations(self, batch_tokens: torch.Tensor) -> torch.Tensor:
        """Raw hook_z of the source's heads: `[batch, pos]` -> `[batch, pos', d_in]`
        (`pos'` after `seqpos_slice`), float32 on the store's device, as upstream."""
        with torch.autocast(
            device_type=_get_input_token_device(self.model).type,
            dtype=torch.bfloat16,
            enabled=self.autocast_lm,
        ):
            activations = self.source.activations(batch_tokens, **self.model_kwargs)
        return activations[:, slice(*self.seqpos_slice)].to(self.device, torch.float32)

    @override
    @torch.no_grad()
    def get_raw_llm_batch(
        self, raise_on_epoch_end: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`([tokens, d_in], [tokens] | None)` as upstream, scaled per head if the source
        normalises (live and cached activations alike)."""
        activations, token_ids = super().get_raw_llm_batch(raise_on_epoch_end)
        return self.source.normalize(activations), token_ids

    @torch.no_grad()
    def estimate_per_head_scale(self, n_batches: int) -> torch.Tensor:
        """Estimate the source's per-head scale from `n_batches` raw LLM batches (they
        are consumed, as SAELens's own norm estimate consumes training batches)."""
        sample = torch.cat(
            [ActivationsStore.get_raw_llm_batch(self)[0] for _ in range(n_batches)]
        )
        return self.source.estimate_per_head_scale(sample)


def check_config_matches_source(cfg: LanguageModelSAERunnerConfig[Any], source: HookZSource) -> None:
    """ValueError unless the runner config trains on exactly what `source` produces."""
    layout = source.layout
    if cfg.hook_name != layout.hook_name:
        raise ValueError(
            f"config hook_name {cfg.hook_name!r} does not match the source's "
            f"{layout.hook_name!r}; set hook_name={layout.hook_name!r}"
        )
    if cfg.sae.d_in != layout.d_in:
        raise ValueError(
            f"config sae.d_in={cfg.sae.d_in} does not match the source: heads "
            f"{list(layout.heads)} x d_head {layout.d_head} = {layout.d_in}"
        )
    if cfg.hook_head_index is not None:
        raise ValueError(
            f"hook_head_index={cfg.hook_head_index} cannot be combined with a HookZSource; "
            f"pass heads=[{cfg.hook_head_index}] to the source instead"
        )
