"""Train one block-diagonal SAE over several processes with torchrun (gloo on CPU).

    torchrun --standalone --nproc-per-node 2 examples/distributed_train.py --parallel heads
    torchrun --standalone --nproc-per-node 2 examples/distributed_train.py --parallel data --quick

`heads`: each rank trains its heads' blocks on the whole token stream, and rank 0 saves
one ordinary `BlockDiagonalSAE`. `data`: each rank trains a replica on its shard of the
token stream with averaged gradients. A checkpoint is written every 10 steps; stop with
Ctrl-C and rerun with `--resume <the step_N folder it prints>` to continue exactly.
Every rank gets the saved SAE back; rank 0 prints. See docs/distributed.md.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from sae_lens_attn.models import corpus_dataset, load_embedded_model
from sae_lens_attn.training.train import train_hook_z_sae


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parallel", choices=("data", "heads"), default="heads")
    parser.add_argument("--out", type=Path, default=Path("example_output"))
    parser.add_argument("--resume", type=Path, default=None, help="a step_N checkpoint folder")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    args = parser.parse_args(argv)

    context = 64 if args.quick else 128
    sae, layout = train_hook_z_sae(
        load_embedded_model(), layer=1, architecture="block_diagonal",
        dataset=corpus_dataset(context, n_sequences=128 if args.quick else 8192),
        training_tokens=8_192 if args.quick else 1_000_000, train_batch_size_tokens=1024,
        expansion_factor=2 if args.quick else 8, lr=1e-3, sae_kwargs={"l1_coefficient": 2.0},
        parallel=args.parallel, output_path=args.out / f"sae_{args.parallel}",
        checkpoint_path=str(args.out / f"checkpoints_{args.parallel}"), checkpoint_every=10,
        resume_from=args.resume,
    )
    if os.environ.get("RANK", "0") == "0":
        metadata = sae.cfg.metadata
        print(f"{type(sae).__name__} on {layout.hook_name}: {layout.n_heads} heads, d_sae "
              f"{sae.cfg.d_sae}, trained by {metadata.world_size} ranks "
              f"(--parallel {metadata.parallel}), L0 {metadata.l0:.1f}, saved to "
              f"{args.out / f'sae_{args.parallel}'}")


if __name__ == "__main__":
    main()
