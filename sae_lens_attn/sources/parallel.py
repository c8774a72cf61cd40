"""How one SAE training run is spread over torchrun's processes: `--parallel data|heads`.

`SingleProcess` is the default and does nothing. The two distributed modes hook into the
`HookZTrainingRunner` (construction, the store, the SAE's gradients) and into the
`HookZSAETrainer` (after each step, at the end), never into a second training loop:

- `DataParallel`: rank r reads chunks r, r+W, r+2W, ... of the token stream (a chunk is
  one local batch of rows) with a local batch of `train_batch_size_tokens / W`; every
  parameter's gradient is averaged over the ranks in a post-accumulate-grad hook (one
  all-reduce per parameter, before SAELens clips the gradient norm), so every rank makes
  the same update. The sparsity statistics (steps since each feature fired, firing
  counts) are combined after each step, so the dead-feature mask, the TopK auxiliary
  loss and the saved L0 are those of the global batch.
- `HeadParallel` (block-diagonal SAEs only): rank r owns a contiguous group of heads,
  reads the same token stream as every rank and trains only its heads' blocks. The loss
  is a sum over heads (MSE, L1 with decoder norms, per-head TopK), so no gradient
  crosses ranks; the one global quantity left is SAELens's gradient-norm clip (max norm
  1 over all parameters), made exact by all-reducing one scalar per step. Rank 0 gathers
  the blocks once at the end into one ordinary `BlockDiagonalSAE`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from sae_lens import SAE, LanguageModelSAERunnerConfig, TrainingSAE
from sae_lens.saes.sae import TrainingSAEConfig

from sae_lens_attn.sources.distributed import (
    Communicator,
    launched_by_torchrun,
    torchrun_process_group,
)
from sae_lens_attn.sources.hook_z import HookZSource

if TYPE_CHECKING:
    from sae_lens.training.sae_trainer import SAETrainer

    from sae_lens_attn.sources.store import HookZActivationsStore

PARALLEL_MODES = ("data", "heads")
SINGLE = "none"


class Parallelism:
    """One process: every hook is a no-op. Base class of the distributed modes."""

    mode = SINGLE
    comm: Communicator | None = None

    def __init__(self) -> None:
        self.stop_agreed = False  # a stop request every rank has seen (set after a step)
        self._stop_local = False
        self._hooks: list[Any] = []

    @property
    def rank(self) -> int:
        return 0 if self.comm is None else self.comm.rank

    @property
    def world_size(self) -> int:
        return 1 if self.comm is None else self.comm.world_size

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def load_saved_sae(self, folder: str | Path, device: str) -> SAE[Any]:
        """The SAE rank 0 saved in `folder`, on every rank (rank 0 sends its config and
        weights, so the other ranks need not see rank 0's disk)."""
        if self.comm is None:
            return SAE.load_from_disk(folder, device=device)
        sae = SAE.load_from_disk(folder, device=device) if self.is_main else None
        cfg, state = self.comm.broadcast_from_main(
            (sae.cfg.to_dict(), {k: v.cpu() for k, v in sae.state_dict().items()}) if sae else None
        )
        if sae is None:
            sae = SAE.from_dict({**cfg, "device": device})
            sae.load_state_dict(state)
        return sae

    def metadata(self) -> dict[str, Any]:
        """What saved SAEs record in `cfg.metadata`."""
        return {"world_size": self.world_size, "parallel": self.mode}

    def request_stop(self) -> None:
        """This rank was asked to stop (a signal); all ranks agree on it after a step."""
        self._stop_local = True
        if self.comm is None:
            self.stop_agreed = True

    def narrow(
        self,
        cfg: LanguageModelSAERunnerConfig[Any],
        source: HookZSource,
        override_sae: TrainingSAE[Any] | None,
    ) -> tuple[LanguageModelSAERunnerConfig[Any], HookZSource, TrainingSAE[Any] | None]:
        """The config, source and SAE this rank trains (the whole run by default)."""
        return cfg, source, override_sae

    def prepare_store(self, store: HookZActivationsStore) -> None:
        """Restrict the store to this rank's data (before anything is read from it)."""

    def agree_on_per_head_scale(self, source: HookZSource) -> None:
        """Make the per-head input scale the same on every rank."""

    def agree_on_activation_scaler(self, trainer: SAETrainer[Any, Any]) -> None:
        """Before the first step: make SAELens's estimated input scaling the same on every rank."""

    def install(self, sae: TrainingSAE[Any]) -> None:
        """Gradient hooks on the SAE this rank trains (removed by `uninstall`)."""

    def uninstall(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

    def after_step(self, trainer: SAETrainer[Any, Any], act_freq_before: torch.Tensor) -> None:
        """Called on every rank right after SAELens's `step`: combine per-rank statistics."""

    def gather_to_main(self, obj: Any) -> list[Any] | None:
        """Every rank's `obj` on rank 0 (in rank order), None elsewhere."""
        return [obj] if self.comm is None else self.comm.gather_to_main(obj)

    def assemble(
        self, sae: TrainingSAE[Any], trainer: SAETrainer[Any, Any], source: HookZSource
    ) -> tuple[TrainingSAE[Any] | None, torch.Tensor | None]:
        """The finished SAE and its log10 feature sparsity on rank 0 (None elsewhere)."""
        return sae, trainer.log_feature_sparsity


class DataParallel(Parallelism):
    """Disjoint shards of the token stream per rank; gradients averaged (see module doc)."""

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


class HeadParallel(Parallelism):
    """Each rank trains its own heads' blocks of one block-diagonal SAE (see module doc)."""

    mode = "heads"

    def __init__(self, comm: Communicator) -> None:
        super().__init__()
        self.comm = comm
        self.full_sae_cfg: TrainingSAEConfig | None = None
        self.positions: list[int] = []
        self._clip_norm = 1.0  # SAELens's SAETrainer clips the gradient norm to 1.0

    def narrow(self, cfg, source, override_sae):  # type: ignore[override]
        check_head_parallel_config(cfg.sae, self.world_size)
        n_heads = source.layout.n_heads
        self.positions = head_positions(n_heads, self.world_size)[self.rank]
        # Build the whole SAE as one process would (same RNG draws), then keep our blocks.
        full = override_sae if override_sae is not None else TrainingSAE.from_dict(
            TrainingSAEConfig.from_dict(cfg.get_training_sae_cfg_dict()).to_dict()
        )
        self.full_sae_cfg = full.cfg
        n_local = len(self.positions)
        local_sae_cfg = dataclasses.replace(
            copy.deepcopy(full.cfg),
            d_in=n_local * full.cfg.d_head,
            d_sae=n_local * full.cfg.d_sae_per_head,
            n_heads=n_local,
        )
        local = build_with_state(type(full), local_sae_cfg, select_heads(full.state_dict(), n_heads, self.positions))
        local_cfg = dataclasses.replace(cfg, sae=local_sae_cfg)
        local_cfg.checkpoint_path = cfg.checkpoint_path  # replace() appended another run id
        local_source = HookZSource(
            source.model,
            source.layout.layer,
            [source.layout.heads[p] for p in self.positions],
            per_head_norm=source.per_head_norm,
        )
        return local_cfg, local_source, local

    def install(self, sae: TrainingSAE[Any]) -> None:
        params = [p for p in sae.parameters() if p.requires_grad]
        ready: list[torch.Tensor] = []

        def clip_like_one_process(param: torch.Tensor) -> None:
            ready.append(param)
            if len(ready) < len(params):
                return
            self._pre_clip_global_norm(ready)
            ready.clear()

        for param in params:
            self._hooks.append(param.register_post_accumulate_grad_hook(clip_like_one_process))

    @torch.no_grad()
    def _pre_clip_global_norm(self, params: list[torch.Tensor]) -> None:
        """Scale the gradients as `clip_grad_norm_(all ranks' parameters, 1.0)` would; the
        trainer's own clip of this rank's smaller norm is then (almost exactly) a no-op."""
        assert self.comm is not None
        squares = torch.stack([p.grad.detach().float().pow(2).sum() for p in params]).sum()
        norm_and_stop = torch.stack([squares, squares.new_tensor(float(self._stop_local))])
        self.comm.all_reduce(norm_and_stop, "sum", "gradient norm")
        self.stop_agreed = bool(norm_and_stop[1] > 0)
        coefficient = torch.clamp(self._clip_norm / (norm_and_stop[0].sqrt() + 1e-6), max=1.0)
        for param in params:
            param.grad.mul_(coefficient.to(param.grad.dtype))

    @torch.no_grad()
    def assemble(self, sae, trainer, source):  # type: ignore[override]
        part = {
            "state": {name: t.detach().cpu() for name, t in sae.state_dict().items()},
            "log_sparsity": trainer.log_feature_sparsity.cpu(),
            "l0": sae.cfg.metadata.l0,
            "dead": sae.cfg.metadata.num_dead_features,
            "scale": source.per_head_scale,
        }
        parts = self.gather_to_main(part)
        if parts is None:
            return None, None
        assert self.full_sae_cfg is not None
        full_cfg = copy.deepcopy(self.full_sae_cfg)
        full_cfg.metadata = copy.deepcopy(sae.cfg.metadata)
        state = {name: torch.cat([p["state"][name] for p in parts]) for name in part["state"]}
        full = build_with_state(type(sae), full_cfg, state)
        if all(p["l0"] is not None for p in parts):
            full.cfg.metadata.l0 = sum(p["l0"] for p in parts)
            full.cfg.metadata.num_dead_features = sum(p["dead"] for p in parts)
        if part["scale"] is not None:
            source.per_head_scale = torch.cat([p["scale"] for p in parts])
        return full, torch.cat([p["log_sparsity"] for p in parts])


def check_head_parallel_config(sae_cfg: TrainingSAEConfig, world_size: int) -> None:
    """ValueError unless `--parallel heads` can train this SAE exactly as one process would."""
    if sae_cfg.architecture() != "block_diagonal":
        raise ValueError(
            f"--parallel heads splits a block-diagonal SAE by heads; architecture "
            f"{sae_cfg.architecture()!r} mixes heads, use --parallel data"
        )
    if sae_cfg.n_heads < world_size:  # type: ignore[attr-defined]
        raise ValueError(
            f"--parallel heads needs at least one head per rank: {sae_cfg.n_heads} heads, "  # type: ignore[attr-defined]
            f"{world_size} ranks; use at most {sae_cfg.n_heads} ranks or --parallel data"  # type: ignore[attr-defined]
        )
    if sae_cfg.activation == "topk" and sae_cfg.aux_loss_coefficient != 0:  # type: ignore[attr-defined]
        raise ValueError(
            "--parallel heads cannot split the TopK auxiliary loss: it ranks dead features "
            "across all heads; use --parallel data for topk block-diagonal SAEs (or "
            "aux_loss_coefficient=0)"
        )
    if sae_cfg.normalize_activations != "none":
        raise ValueError(
            f"--parallel heads cannot split normalize_activations="
            f"{sae_cfg.normalize_activations!r}: SAELens scales by the norm over all heads; "
            "use --per-head-norm (per head, so separable) or --parallel data"
        )


def build_with_state(sae_class: type[TrainingSAE[Any]], cfg: TrainingSAEConfig, state: dict[str, torch.Tensor]) -> TrainingSAE[Any]:
    """An SAE of `sae_class` holding `state`, built without drawing random init weights
    (so every rank's RNG stays where one process's would be)."""
    device = cfg.device
    sae = sae_class(dataclasses.replace(cfg, device="meta"))
    sae.load_state_dict(state, assign=True)
    sae.cfg.device = device
    return sae.to(device)


def head_positions(n_heads: int, world_size: int) -> list[list[int]]:
    """Contiguous, near-equal groups of head positions, one per rank, in rank order."""
    bounds = [round(r * n_heads / world_size) for r in range(world_size + 1)]
    return [list(range(bounds[r], bounds[r + 1])) for r in range(world_size)]


def select_heads(state: dict[str, torch.Tensor], n_heads: int, positions: list[int]) -> dict[str, torch.Tensor]:
    """A block-diagonal SAE's state restricted to some heads: every tensor's leading dim
    is head-major (`[H, ...]` blocks, `[H*m]` / `[H*d_head]` biases), so the heads are
    rows of `t.unflatten(0, (H, -1))`. Concatenating the parts in head order inverts it."""
    return {
        name: tensor.unflatten(0, (n_heads, -1))[positions].flatten(0, 1).clone()
        for name, tensor in state.items()
    }


def shard_rows(dataset: Any, rank: int, world_size: int, rows_per_chunk: int) -> Any:
    """Rows of chunks `rank, rank + W, ...` (chunks of `rows_per_chunk` rows): disjoint
    shards whose round-robin interleaving is the original stream."""

    def mine(index: int) -> bool:
        return (index // rows_per_chunk) % world_size == rank

    if hasattr(dataset, "__len__"):
        return dataset.select([i for i in range(len(dataset)) if mine(i)])
    return dataset.filter(lambda _row, index: mine(index), with_indices=True)


@contextmanager
def parallel_training(mode: str | Parallelism | None, device: str) -> Iterator[Parallelism]:
    """The `Parallelism` for `mode` ("data", "heads", "none"/None: one process; None under
    torchrun means "data"), joining torchrun's process group for the distributed modes.
    A `Parallelism` is used as it is (its caller owns the process group)."""
    if isinstance(mode, Parallelism):
        yield mode
        return
    if mode is None:
        mode = "data" if launched_by_torchrun() else SINGLE
    if mode == SINGLE:
        yield Parallelism()
        return
    if mode not in PARALLEL_MODES:
        raise ValueError(f"unknown parallel mode {mode!r}; expected one of {PARALLEL_MODES}")
    with torchrun_process_group(device) as comm:
        yield DataParallel(comm) if mode == "data" else HeadParallel(comm)
