"""What the damaged-weights check costs on a published-size SAE (gpt2-small hook_z: d_in 768,
d_sae 24576), dense and block-diagonal (12 heads).

Each SAE is saved once with random weights; then, best of `--repeats`:
`SAE.load_from_disk` alone (safetensors maps the file: no data is read yet), the same
plus one `sum()` of every tensor (reading the weights once: the floor for any check),
`load_saved_sae` end to end (header check, load, weight check), and `check_loaded_sae`
again on an SAE already in memory. The last line is the dense SAE's check time,
`check_ms_dense_24576=<ms>`. `--smoke` times each once.

    python benchmarks/weight_check.py [--threads 1] [--repeats 5] [--smoke]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _bench import add_environment_arguments, environment_summary, parse_with_smoke

D_IN, D_SAE, N_HEADS = 768, 24576, 12
LAST_LINE_KEYS = ("check_ms_dense_24576",)


def best_of(repeats: int, run) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_environment_arguments(parser)
    parser.add_argument(
        "--repeats", type=int, default=5, help="runs per figure; the best is shown (default: 5)"
    )
    args = parse_with_smoke(parser, repeats=1)

    import torch
    from sae_lens import SAE, StandardSAE, StandardSAEConfig

    from sae_lens_attn.architectures.block_diagonal import BlockDiagonalSAE, BlockDiagonalSAEConfig
    from sae_lens_attn.sources.saved_sae import load_saved_sae
    from sae_lens_attn.sources.weight_check import check_loaded_sae

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"d_in {D_IN}, d_sae {D_SAE}; {environment_summary(args)}")
    saes = {
        "standard": StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=D_SAE)),
        "block_diagonal": BlockDiagonalSAE(
            BlockDiagonalSAEConfig(d_in=D_IN, d_sae=D_SAE, n_heads=N_HEADS)
        ),
    }
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name, sae in saes.items():
            folder = Path(scratch) / name
            sae.save_model(folder)
            loaded = SAE.load_from_disk(folder)
            check_loaded_sae(loaded)  # the pages are read once before timing
            times = [
                best_of(args.repeats, lambda f=folder: SAE.load_from_disk(f)),
                best_of(
                    args.repeats,
                    lambda f=folder: [t.sum() for t in SAE.load_from_disk(f).state_dict().values()],
                ),
                best_of(args.repeats, lambda f=folder: load_saved_sae(f)),
                best_of(args.repeats, lambda s=loaded: check_loaded_sae(s)),
            ]
            mb = sum(t.numel() * t.element_size() for t in loaded.state_dict().values()) / 1e6
            rows.append((name, f"{mb:.0f}", *(f"{t * 1e3:.1f}" for t in times)))
    header = (
        "SAE",
        "weights MB",
        "load_from_disk ms",
        "load + read once ms",
        "load_saved_sae ms",
        "check_loaded_sae ms",
    )
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]
    for line in (header, *rows):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)))
    print(f"check_ms_dense_24576={rows[0][-1]}")


if __name__ == "__main__":
    main()
