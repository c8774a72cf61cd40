"""Subcommands of `sae-lens-attn`: one module each, found by `sae_lens_attn.cli`."""
