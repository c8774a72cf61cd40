"""`python -m sae_lens_attn ...` runs the `sae-lens-attn` command line, so torchrun can
start it: `torchrun --nproc-per-node 2 -m sae_lens_attn train ...`."""

import sys

from sae_lens_attn.cli import main

if __name__ == "__main__":
    sys.exit(main())
