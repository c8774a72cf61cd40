"""`--parallel data`: every rank trains a replica on its own shard of the token stream.

Rank r reads chunks r, r+W, r+2W, ... of the token stream (a chunk is one local batch of
rows) with a local batch of `train_batch_size_tokens / W`, so with SAELens's shuffling off
the union of the ranks' batches at step t is one process's batch t. Every parameter's
gradient is averaged over the ranks in a post-accumulate-grad hook (one all-reduce per
parameter, before SAELens clips the gradient norm), so every rank makes the same update.
The sparsity statistics (steps since each feature fired, firing counts) are combined
after each step, so the dead-feature mask, the TopK auxiliary loss and the saved L0 are
those of the global batch.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from sae_lens import TrainingSAE

from sae_lens_attn.sources.hook_z import HookZSource
from sae_lens_attn.training.parallel.base import Parallelism
from sae_lens_attn.training.parallel.distributed import Communicator

if TYPE_CHECKING:
    from sae_lens.training.sae_trainer import SAETrainer

    from sae_lens_attn.sources.store import HookZActivationsStore


class DataParallel(Parallelism):
    """Disjoint shards of the token stream per rank; gradients averaged (module doc)."""

    mode = "data"

    def __init__(self, comm: Communicator) -> None:
        super().__init__()
        self.comm = comm

    def narrow(self, cfg, source, override_sae):  # type: ignore[override]
        batch, world = cfg.train_batch_size_tokens, self.world_size
        if batch % world:
            raise ValueError(
                f"--parallel data splits each batch of {batch} tokens over {world} ranks; "
                f"choose a batch size divisible by {world} (e.g. {batch // world * world or world})"
            )
        if cfg.use_cached_activations:
            raise ValueError(
                "--parallel data shards the token stream, not an activation cache; train "
                "from tokens (use_cached_activations=False)"
            )
        if cfg.sae.normalize_activations == "covariance_whitening":
            raise ValueError(
                "--parallel data cannot agree on a whitening matrix estimated per rank; use "
                "normalize_activations='none' or 'expected_average_only_in'"
            )
        return cfg, source, override_sae

    def prepare_store(self, store: HookZActivationsStore) -> None:
        store.train_batch_size_tokens //= self.world_size
        rows_per_chunk = max(1, math.ceil(store.train_batch_size_tokens / store.training_context_size))
        store.dataset = shard_rows(store.dataset, self.rank, self.world_size, rows_per_chunk)
        store.iterable_sequences = store._iterate_tokenized_sequences()

    @torch.no_grad()
    def agree_on_per_head_scale(self, source: HookZSource) -> None:
        # mean head norms averaged over the ranks' (equal-sized) samples
        assert source.per_head_scale is not None and self.comm is not None
        mean_norms = source.layout.d_head**0.5 / source.per_head_scale
        self.comm.all_reduce(mean_norms, "sum", "per-head scale")
        source.per_head_scale = source.layout.d_head**0.5 / (mean_norms / self.world_size)

    @torch.no_grad()
    def agree_on_activation_scaler(self, trainer: SAETrainer[Any, Any]) -> None:
        # `expected_average_only_in`: sqrt(d_in) / mean ||x||, each rank's from its own
        # shard; average the mean norms, as for the per-head scale
        factor = trainer.activation_scaler.scaling_factor
        if factor is None:
            return
        assert self.comm is not None
        d_in = trainer.sae.cfg.d_in
        mean_norm = torch.tensor([d_in**0.5 / factor], dtype=torch.float64)
        self.comm.all_reduce(mean_norm, "sum", "activation scaling")
        trainer.activation_scaler.scaling_factor = d_in**0.5 / (mean_norm.item() / self.world_size)

    def install(self, sae: TrainingSAE[Any]) -> None:
        comm = self.comm
        assert comm is not None

        def average(param: torch.Tensor) -> None:
            comm.all_reduce(param.grad, "sum", "gradients").div_(comm.world_size)

        for param in sae.parameters():
            comm.broadcast(param.data, "initial weights")  # replicas start equal, whatever made them
            if param.requires_grad:
                self._hooks.append(param.register_post_accumulate_grad_hook(average))

    @torch.no_grad()
    def after_step(self, trainer, act_freq_before):  # type: ignore[override]
        assert self.comm is not None
        # "steps since fired" of the global batch is the minimum over ranks; firing
        # counts add up; the stop flag rides along.
        self.comm.all_reduce(trainer.n_forward_passes_since_fired, "min", "statistics")
        fired_and_stop = torch.cat(
            [trainer.act_freq_scores - act_freq_before,
             torch.tensor([float(self._stop_local)], device=act_freq_before.device)]
        )
        self.comm.all_reduce(fired_and_stop, "sum", "statistics")
        trainer.act_freq_scores = act_freq_before + fired_and_stop[:-1]
        self.stop_agreed = bool(fired_and_stop[-1] > 0)
        # SAELens counted this rank's batch; the step consumed every rank's
        trainer.n_training_samples += trainer.cfg.train_batch_size_samples - trainer.cfg.train_batch_size_samples // self.world_size


def shard_rows(dataset: Any, rank: int, world_size: int, rows_per_chunk: int) -> Any:
    """Rows of chunks `rank, rank + W, ...` (chunks of `rows_per_chunk` rows): disjoint
    shards whose round-robin interleaving is the original stream."""

    def mine(index: int) -> bool:
        return (index // rows_per_chunk) % world_size == rank

    if hasattr(dataset, "__len__"):
        return dataset.select([i for i in range(len(dataset)) if mine(i)])
    return dataset.filter(lambda _row, index: mine(index), with_indices=True)
