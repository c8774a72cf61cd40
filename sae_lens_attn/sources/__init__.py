"""Activation sources: where SAE training inputs come from, and their head layout."""

from sae_lens_attn.sources.head_layout import HeadLayout, layer_of_hook_z

__all__ = ["HeadLayout", "layer_of_hook_z"]
