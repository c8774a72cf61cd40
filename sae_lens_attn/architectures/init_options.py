"""What a data-driven SAE initialisation asks for (`SAEInit`); the math is in
`data_init.py`. Imports nothing heavy, so the CLI can name the choices without torch."""

from __future__ import annotations

from dataclasses import dataclass

B_DEC_INITS = ("zeros", "mean", "geometric_median")
DECODER_INITS = ("kaiming", "active_subspace", "data_samples", "kmeans")


@dataclass(frozen=True)
class SAEInit:
    """How to initialise an SAE before training (see `data_init.py` for the math).

    Args:
        b_dec: "zeros", "mean" or "geometric_median" of the sample.
        decoder: "kaiming", "active_subspace", "data_samples" or "kmeans".
        variance: share of the sample's spread around `b_dec` that the active subspace
            holds, in (0, 1].
        n_batches: LLM batches of training data drawn (and consumed) for the sample.
    """

    b_dec: str = "zeros"
    decoder: str = "kaiming"
    variance: float = 0.999
    n_batches: int = 8

    def __post_init__(self) -> None:
        if self.b_dec not in B_DEC_INITS:
            raise ValueError(f"b_dec init must be one of {B_DEC_INITS}, got {self.b_dec!r}")
        if self.decoder not in DECODER_INITS:
            raise ValueError(f"decoder init must be one of {DECODER_INITS}, got {self.decoder!r}")
        if not 0 < self.variance <= 1:
            raise ValueError(f"active-subspace variance must be in (0, 1], got {self.variance}")
        if not isinstance(self.n_batches, int) or self.n_batches < 1:
            raise ValueError(f"n_batches must be a positive integer, got {self.n_batches!r}")

    @property
    def needs_data(self) -> bool:
        """False for SAELens's own initialisation (nothing to do)."""
        return self.b_dec != "zeros" or self.decoder != "kaiming"
