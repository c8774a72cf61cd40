"""Train the tests' tiny model with `train_hook_z_sae`, for launching under torchrun.

    torchrun --nproc-per-node 2 tests/_distributed_worker.py OUT [--parallel data|heads]
        [--checkpoint-every N] [--resume DIR] [--steps N] [--shuffle]

Every rank reads the same seeded token tensor; `OUT/sae` is the saved SAE and
`OUT/checkpoints` the checkpoint root. Settings are fixed so a test can run the same
training in one process (`train(...)` below) and compare.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from conftest import make_tiny_model  # noqa: E402

from sae_lens_attn.training.train import train_hook_z_sae  # noqa: E402

N_STEPS = 20
BATCH_TOKENS = 64  # global batch; 2 rows of 32 tokens


def tokens() -> torch.Tensor:
    """`[96, 32]` seeded token rows (more than 20 steps of 64 tokens need)."""
    return torch.randint(0, 101, (96, 32), generator=torch.Generator().manual_seed(1))


def train(out: Path, parallel: str | None, architecture: str = "block_diagonal",
          steps: int = N_STEPS, shuffle: bool = False, **kwargs):
    """The training every test compares: without `shuffle`, the global batch of step t is
    tokens [64 t, 64 (t+1)) of the stream in one process and under --parallel data; with
    it, SAELens's default mixing buffer (half kept, shuffled)."""
    return train_hook_z_sae(
        make_tiny_model(), 1, architecture=architecture, dataset=tokens(),
        training_tokens=steps * BATCH_TOKENS, train_batch_size_tokens=BATCH_TOKENS,
        store_batch_size_prompts=2, expansion_factor=2, lr=3e-3, seed=3,
        sae_kwargs={"l1_coefficient": 0.5} if architecture != "topk" else {"k": 4},
        runner_kwargs={"activations_mixing_fraction": 0.5 if shuffle else 0.0, "n_batches_in_buffer": 4 if shuffle else 2},
        output_path=out / "sae", checkpoint_path=str(out / "checkpoints"),
        parallel=parallel, **kwargs,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--parallel", default=None)
    parser.add_argument("--architecture", default="block_diagonal")
    parser.add_argument("--checkpoint-every", type=int, default=None)
    parser.add_argument("--resume", default=None)
    parser.add_argument("--steps", type=int, default=N_STEPS)
    parser.add_argument("--shuffle", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    train(args.out, args.parallel, args.architecture, args.steps, args.shuffle,
          checkpoint_every=args.checkpoint_every, resume_from=args.resume)


if __name__ == "__main__":
    main()
