"""Cache hook_z activations in SAELens's format, with the head layout beside them.

`HookZCacheActivationsRunner` is SAELens's `CacheActivationsRunner` (sharding, shard
consolidation, shuffling, Hub upload all inherited) with the source's store: the cache
holds raw activations of the source's heads in head-major order, in a column named after
the hook, and `hook_z_source.json` beside the Arrow files names the heads. Train from it
with an ordinary config (`use_cached_activations=True`, `cached_activations_path=...`)
and `HookZTrainingRunner`, which checks the layout and applies any per-head scale.
"""

from __future__ import annotations

from pathlib import Path

import torch
from datasets import Array2D, Dataset, Features, Sequence, Value
from sae_lens import CacheActivationsRunner
from sae_lens.cache_activations_runner import _mk_activations_store
from sae_lens.config import CacheActivationsRunnerConfig, HfDataset
from sae_lens.util import str_to_dtype
from typing_extensions import override

from sae_lens_attn._upstream import disable_datasets_torchvision_formatting
from sae_lens_attn.sources.hook_z import HookZSource
from sae_lens_attn.sources.store import HookZActivationsStore
from sae_lens_attn.sources.tokens import as_token_dataset, row_length


class HookZCacheActivationsRunner(CacheActivationsRunner):
    """SAELens's activation cache runner reading a `HookZSource` (model included:
    upstream's constructor would load `cfg.model_name` from the hub)."""

    def __init__(
        self,
        cfg: CacheActivationsRunnerConfig,
        source: HookZSource,
        override_dataset: Dataset | None = None,
    ) -> None:
        if source.per_head_norm:
            raise ValueError(
                "a cache holds raw activations: cache with per_head_norm=False and train "
                "from it with a per_head_norm=True source"
            )
        if cfg.hook_name != source.hook_name or cfg.d_in != source.d_in:
            raise ValueError(
                f"cache config (hook_name={cfg.hook_name!r}, d_in={cfg.d_in}) does not match "
                f"the source: set hook_name={source.hook_name!r}, d_in={source.d_in}"
            )
        disable_datasets_torchvision_formatting()
        # What upstream's __init__ sets up, with the source's model and store.
        self.cfg = cfg
        self.model = source.model
        store = _mk_activations_store(source.model, cfg, override_dataset=override_dataset)
        # Upstream builds a plain ActivationsStore with the cache settings; make that very
        # object ours rather than re-listing its ~20 arguments.
        store.__class__ = HookZActivationsStore
        store.source = source
        self.activations_store = store
        self.source = source
        self.context_size = self._get_sliced_context_size(cfg.context_size, cfg.seqpos_slice)
        self.features = Features(
            {
                cfg.hook_name: Array2D(shape=(self.context_size, cfg.d_in), dtype=cfg.dtype),
                "token_ids": Sequence(Value(dtype="int32"), length=self.context_size),
            }
        )

    @override
    @torch.no_grad()
    def run(self) -> Dataset:
        """Write the cache (upstream), then `hook_z_source.json` beside it."""
        dataset = super().run()
        self.source.save_state(Path(str(self.cfg.new_cached_activations_path)))
        return dataset


def cache_hook_z_activations(
    source: HookZSource,
    dataset: HfDataset | torch.Tensor,
    path: str | Path,
    n_tokens: int | None = None,
    context_size: int | None = None,
    batch_size_prompts: int = 16,
    shuffle: bool = True,
    seed: int = 42,
) -> Dataset:
    """Cache `n_tokens` (default: the whole dataset) of the source's raw activations at
    `path` (an empty or new folder), in SAELens's format, with `hook_z_source.json`.

    Sizes upstream's shards from `n_tokens`: its `buffer_size_gb` (2 GB by default) sets
    the tokens per shard whatever `training_tokens` says, so a small cache with the
    default would read 2 GB of activations.
    """
    dataset = as_token_dataset(dataset)
    context_size = context_size or row_length(dataset)
    if n_tokens is None:
        n_tokens = len(dataset) * context_size
    tokens_per_batch = batch_size_prompts * context_size
    n_tokens -= n_tokens % tokens_per_batch
    if n_tokens == 0:
        raise ValueError(
            f"n_tokens must be at least one batch: batch_size_prompts x context_size = "
            f"{tokens_per_batch}"
        )
    dtype = "float32"
    cfg = CacheActivationsRunnerConfig(
        dataset_path=str(path),
        model_name=source.model.cfg.model_name,
        model_batch_size=batch_size_prompts,
        hook_name=source.hook_name,
        d_in=source.d_in,
        training_tokens=n_tokens,
        context_size=context_size,
        new_cached_activations_path=str(path),
        shuffle=shuffle,
        seed=seed,
        dtype=dtype,
        device=str(source.model.cfg.device),
        buffer_size_gb=n_tokens * source.d_in * str_to_dtype(dtype).itemsize / 1e9,
    )
    return HookZCacheActivationsRunner(cfg, source, override_dataset=dataset).run()
