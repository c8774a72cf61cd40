"""`sae-lens-attn demo`: the whole pipeline on one model (settings, pipeline, report)."""
