"""Lifting the encoder bias of silent features of a per-head TopK SAE while training
(`train`'s default for them).

After every training step, each feature that did not fire on the step's batch gets its
`b_enc` raised by `lift` times its group's pre-activation spread (a group is a head of a
block-diagonal SAE, the whole input of a dense one):

    sigma_g = sqrt(mean_t ||x_tg - b_dec_g||^2 * mean_f ||W_enc[g][:, f]||^2 / width_g)

which is the standard deviation of the pre-activations `W_enc^T (x - b_dec)` when inputs
and encoder columns point in independent directions, so `lift` means the same on any
model and input scale. A feature that keeps losing every TopK slot (or stays below ReLU's
zero) climbs until it wins one on some token, where its own gradient takes over; a
feature is left alone on every batch it fires in. It is pressure towards a minimum firing
rate of about once per batch, in the spirit of the bias-only load balancing of
DeepSeek-V3's expert routing (Wang et al. 2024, "Auxiliary-loss-free load balancing
strategy for mixture-of-experts"), but it moves the SAE's own `b_enc`, so the saved SAE
encodes exactly as it was trained.

Why: at expansion 32 the live features of a per-head TopK SAE outgrow the rest within tens
of steps at `train`'s learning rate, and dead-feature resampling alone left 4% of them
dead. Only per-head TopK SAEs are lifted: where a threshold decides L0 (ReLU, JumpReLU,
BatchTopK's inference threshold) a higher `b_enc` raises L0, and on SAELens's dense TopK
it cost CE loss recovered at low k. The measurements are in docs/initialisation.md.
"""

from __future__ import annotations

import torch
from torch import nn

from sae_lens_attn.training.resampling import by_feature, feature_groups


def lift_unsupported_reason(sae: nn.Module) -> str | None:
    """Why `sae` is not lifted (None: it is): only per-head TopK SAEs (block-diagonal with
    activation "topk") are."""
    if hasattr(sae, "W_enc_blocks") and getattr(sae.cfg, "activation", None) == "topk":
        return None
    return (f"{type(sae).__name__} is not a per-head TopK SAE (block_diagonal with activation topk), "
            "the only kind it is measured to help")


def pre_activation_spread(sae: nn.Module, sae_in: torch.Tensor) -> torch.Tensor:
    """`[n_groups]`: each group's `sigma_g` (module docstring) on `sae_in [batch, d_in]`."""
    n_groups, (_, encoder, _) = feature_groups(sae)
    columns = by_feature(encoder.detach(), n_groups, "encoder")  # [G, m, w]
    width = columns.shape[-1]
    centred = (sae_in - sae.b_dec.detach()).reshape(-1, n_groups, width)  # [batch, G, w]
    input_power = centred.square().sum(-1).mean(0)  # [G]
    encoder_power = columns.square().sum(-1).mean(-1)  # [G]
    return (input_power * encoder_power / width).sqrt()


@torch.no_grad()
def lift_silent_biases(sae: nn.Module, silent: torch.Tensor, sae_in: torch.Tensor, lift: float) -> int:
    """Raise `b_enc` of the `silent [d_sae]` features of `sae` by `lift` times their group's
    pre-activation spread on `sae_in [batch, d_in]` (the trainer's scaled batch), in
    place. Returns how many features were lifted."""
    n_groups, (_, _, bias) = feature_groups(sae)
    step = lift * pre_activation_spread(sae, sae_in)  # [G]
    by_feature(bias.data, n_groups, "bias").add_(silent.view(n_groups, -1).to(step.dtype) * step.unsqueeze(1))
    return int(silent.sum())
