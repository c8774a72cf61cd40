"""Recover known per-head features from synthetic hook_z-like data.

    python examples/toy.py            # 8 heads x 32, 512 true features (about a minute)
    python examples/toy.py --quick    # 4 heads x 8, 64 features (seconds)

A multi-head toy ground truth (`sae_lens_attn.toy`, built on `sae_lens.synthetic`) has
features that each live in one head's slice, like hook_z. A block-diagonal and a dense SAE
of the same size are trained on it with SAELens's synthetic runner and scored by mean max
cosine similarity (MMCS) against the true features.
"""

from __future__ import annotations

import argparse

from sae_lens_attn.toy import (
    MultiHeadToyConfig,
    ToyTrainingConfig,
    evaluate_on_toy,
    make_multi_head_toy,
    train_sae_on_toy,
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    args = parser.parse_args(argv)

    if args.quick:
        toy_config = MultiHeadToyConfig(n_heads=4, d_head=8, n_features=64, mean_l0=3.0)
        training = ToyTrainingConfig(training_samples=50_000)
    else:
        toy_config = MultiHeadToyConfig()  # 8 heads x 32, 512 features, L0 ~5
        training = ToyTrainingConfig(training_samples=300_000)
    toy = make_multi_head_toy(toy_config)

    print(f"{'architecture':15s} {'MMCS':>6s} {'dead':>6s} {'L0':>6s} {'expl. var':>9s}")
    for architecture in ("block_diagonal", "standard"):
        sae = train_sae_on_toy(toy, architecture, d_sae=toy_config.n_features,
                               l1_coefficient=0.3, training=training)
        result = evaluate_on_toy(sae, toy, n_samples=5_000)
        print(f"{architecture:15s} {result.mmcs:6.3f} {result.dead_share:6.1%} "
              f"{result.sae_l0:6.2f} {result.explained_variance:9.3f}")


if __name__ == "__main__":
    main()
