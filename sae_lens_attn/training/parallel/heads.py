"""`--parallel heads`: each rank trains its own heads' blocks of one block-diagonal SAE.

Rank r owns a contiguous group of heads, reads the same token stream as every rank and
trains only its heads' blocks. The loss is a sum over heads (MSE, L1 with decoder norms,
per-head TopK), so no gradient crosses ranks; the one global quantity left is SAELens's
gradient-norm clip (max norm 1 over all parameters), made exact by all-reducing one
scalar per step. Every rank builds the whole SAE from the seed and keeps its blocks (the
same RNG draws as one process, so every rank shuffles alike); rank 0 gathers the blocks
once at the end into one ordinary `BlockDiagonalSAE`. What splits and what does not:
docs/distributed.md.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
from sae_lens import TrainingSAE
from sae_lens.saes.sae import TrainingSAEConfig

from sae_lens_attn.sources.hook_z import HookZSource
from sae_lens_attn.training.parallel.base import Parallelism
from sae_lens_attn.training.parallel.distributed import Communicator


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
            "--parallel heads does not run the TopK auxiliary loss: it is taken per head, "
            "but head-parallel training has not been checked against it; use --parallel data "
            "for topk block-diagonal SAEs (or aux_loss_coefficient=0)"
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
