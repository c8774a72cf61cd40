"""Toy ground truth for hook_z SAEs: multi-head synthetic data with known features,
MMCS recovery metrics and dictionary-size sweeps, built on `sae_lens.synthetic`."""

from sae_lens_attn.toy.estimate import (
    SizeEstimate,
    estimate_from_dead_latents,
    estimate_from_dictionary_mmcs,
)
from sae_lens_attn.toy.evaluation import ToyEvaluation, evaluate_on_toy
from sae_lens_attn.toy.ground_truth import (
    MultiHeadToy,
    MultiHeadToyConfig,
    make_multi_head_toy,
    zipfian_for_mean_l0,
)
from sae_lens_attn.toy.metrics import (
    dictionary_mmcs_matrix,
    max_cosine_per_feature,
    mmcs,
    split_cosine_per_feature,
)
from sae_lens_attn.toy.report import write_report
from sae_lens_attn.toy.sweep import SweepConfig, SweepResult, default_dictionary_sizes, run_sweep
from sae_lens_attn.toy.training import ToyTrainingConfig, train_sae_on_toy

__all__ = [
    "MultiHeadToy",
    "MultiHeadToyConfig",
    "SizeEstimate",
    "SweepConfig",
    "SweepResult",
    "ToyEvaluation",
    "ToyTrainingConfig",
    "default_dictionary_sizes",
    "dictionary_mmcs_matrix",
    "estimate_from_dead_latents",
    "estimate_from_dictionary_mmcs",
    "evaluate_on_toy",
    "make_multi_head_toy",
    "max_cosine_per_feature",
    "mmcs",
    "run_sweep",
    "split_cosine_per_feature",
    "train_sae_on_toy",
    "write_report",
    "zipfian_for_mean_l0",
]
