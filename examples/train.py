"""Train a block-diagonal SAE on layer 1's hook_z of the embedded model, then evaluate it.

    python examples/train.py                 # 1M tokens (a few minutes on a laptop CPU)
    python examples/train.py --quick         # 16k tokens (seconds)

The SAE is trained by SAELens's own runner (through `train_hook_z_sae`) on the embedded
model's stdlib corpus, saved to `--out/sae` (load it with `SAE.load_from_disk`), and
evaluated with SAELens's evals on held-out files. `detect.py`, `dashboard.py` and
`plugin.py` use the saved SAE.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sae_lens_attn.models import corpus_dataset, load_embedded_model
from sae_lens_attn.training.evaluation import evaluate_hook_z_sae
from sae_lens_attn.training.train import train_hook_z_sae


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("example_output"))
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    args = parser.parse_args(argv)

    model = load_embedded_model()
    context = 64 if args.quick else 128
    train = corpus_dataset(context, n_sequences=256 if args.quick else 8192)
    sae, layout = train_hook_z_sae(
        model, layer=1, architecture="block_diagonal", dataset=train,
        training_tokens=16_384 if args.quick else 1_000_000,
        expansion_factor=2 if args.quick else 8, lr=1e-3,
        sae_kwargs={"l1_coefficient": 2.0}, output_path=args.out / "sae",
    )
    print(f"trained {sae.cfg.architecture()} SAE: d_in {sae.cfg.d_in} = {layout.n_heads} heads "
          f"x {layout.d_head}, d_sae {sae.cfg.d_sae}, saved to {args.out / 'sae'}")

    held_out = corpus_dataset(context, n_sequences=16, split="test")
    metrics = evaluate_hook_z_sae(sae, model, held_out, n_batches=2, batch_size_prompts=8)
    for name in ("l0", "explained_variance", "ce_loss_score"):
        print(f"{name:20s} {metrics[name]:.3f}")


if __name__ == "__main__":
    main()
