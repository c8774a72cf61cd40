"""Neuronpedia export: the batch files sae_dashboard's Neuronpedia runner writes, with our
DFA by source position and head attribution.

Each batch is made the way `sae_dashboard.neuronpedia.neuronpedia_runner.NeuronpediaRunner
.run` makes it: `SaeVisRunner`'s data with the runner's sequence layout
(`neuronpedia_layout`: whole prompts, top activations and quantile groups) and
`ignore_tokens` (pad, BOS, EOS), then sae_dashboard's own
`NeuronpediaConverter.convert_to_np_json`. The data comes from one model pass over the
prompts for the whole export (`dashboard.one_pass`: equal to the runner's, which ran the
model again for every 64 features), on the dashboard's copy of the SAE
(`dashboard.sae_vis.run_sae_vis`: any hook_z SAE, activations of the SAE as given); the
DFA reads the attention kept by that pass. We add, per batch:

- every activation's `dfa_values`, `dfa_maxValue`, `dfa_targetIndex` (Neuronpedia's DFA
  fields, in the converter's convention: source positions 1.., BOS dropped, the target
  index shifted by one) from our DFA (`attribution.dfa`) at the example's own token, plus
  `dfa_head_totals` (DFA summed over sources, per head of `heads`) and `dfa_bias` (the
  `b_dec`/`b_enc` terms), so `sum(dfa_head_totals) + dfa_bias` is the pre-activation;
- per feature `decoder_weights_dist` (the field the runner fills with
  `get_decoder_weights_distribution` when it computes DFA: each head's share of the
  decoder norm, over all heads of the layer), `head_attribution` (decoder and encoder
  shares per head of the SAE, with head labels) and `families` (the detectors' rows; null
  when none were given);
- per batch `hook_name` and `head_layout` (layer, heads, d_head, n_model_heads).

Files in the output folder, as the runner writes them: `batch-N.json`, one per batch of
`batch_size` features (each written atomically), `skipped_indexes.json` (dead features)
and `run_settings.json` (the settings; it also marks the folder as an export, and an
export with the same settings resumes: finished batches are kept, as the runner does).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sae_lens_attn._atomic import atomic_write_text
from sae_lens_attn.errors import InvalidInputError

if TYPE_CHECKING:
    import torch
    from sae_dashboard.layout import SaeVisLayoutConfig
    from sae_dashboard.sae_vis_data import SaeVisData
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

    from sae_lens_attn.dashboard.data import ExampleSite
    from sae_lens_attn.dashboard.one_pass import PromptActivations
    from sae_lens_attn.detectors.results import FamilyRow
    from sae_lens_attn.sources.head_layout import HeadLayout

SETTINGS_FILE = "run_settings.json"
SKIPPED_FILE = "skipped_indexes.json"
EXPORT_MARK = "sae_lens_attn_export"
EXPORT_KIND = "neuronpedia"


@dataclass(frozen=True)
class NeuronpediaSettings:
    """What the export computes and how Neuronpedia files it. `model_id` and `sae_set`
    are Neuronpedia's model and source-set names; `dataset` names the prompts' source
    (the batches' `dataset` field). The sequence sizes are the runner's defaults
    (`NeuronpediaRunnerConfig`); `batch_size` is its `n_features_at_a_time`."""

    model_id: str
    sae_set: str
    dataset: str = ""
    batch_size: int = 128
    n_quantiles: int = 5
    top_acts_group_size: int = 20
    quantile_group_size: int = 5
    minibatch_size_tokens: int = 32
    minibatch_size_features: int = 64
    device: str = "cpu"


@dataclass(frozen=True)
class NeuronpediaExport:
    """The files an export wrote (or kept, resuming) and the dead features it skipped."""

    folder: Path
    batches: list[Path] = field(default_factory=list)
    skipped: tuple[int, ...] = ()


def neuronpedia_layout(settings: NeuronpediaSettings) -> SaeVisLayoutConfig:
    """The feature-centric layout `NeuronpediaRunner.run` gives `SaeVisRunner` (whole
    prompts as sequences, `compute_buffer`, its table and histogram components)."""
    from sae_dashboard.components_config import (
        ActsHistogramConfig,
        Column,
        FeatureTablesConfig,
        LogitsHistogramConfig,
        LogitsTableConfig,
        SequencesConfig,
    )
    from sae_dashboard.layout import SaeVisLayoutConfig

    return SaeVisLayoutConfig(
        columns=[
            Column(
                SequencesConfig(
                    stack_mode="stack-all",
                    buffer=None,
                    compute_buffer=True,
                    n_quantiles=settings.n_quantiles,
                    top_acts_group_size=settings.top_acts_group_size,
                    quantile_group_size=settings.quantile_group_size,
                ),
                ActsHistogramConfig(),
                LogitsHistogramConfig(),
                LogitsTableConfig(),
                FeatureTablesConfig(n_rows=3),
            )
        ]
    )


def runner_config(
    settings: NeuronpediaSettings, layout: HeadLayout, folder: Path, tokens: torch.Tensor
) -> Any:
    """sae_dashboard's `NeuronpediaRunnerConfig` for these settings (what its converter
    reads: model id, layer, set name, prompt counts, dataset)."""
    from sae_dashboard.neuronpedia.neuronpedia_runner_config import NeuronpediaRunnerConfig

    return NeuronpediaRunnerConfig(
        sae_set=settings.sae_set,
        sae_path="",
        outputs_dir=str(folder),
        model_id=settings.model_id,
        layer=layout.layer,
        n_prompts_total=int(tokens.shape[0]),
        n_tokens_in_prompt=int(tokens.shape[1]),
        huggingface_dataset_path=settings.dataset,
        n_features_at_a_time=settings.batch_size,
        n_quantiles=settings.n_quantiles,
        top_acts_group_size=settings.top_acts_group_size,
        quantile_group_size=settings.quantile_group_size,
        use_dfa=True,
    )


def ignored_tokens(model: HookedTransformer) -> set[int]:
    """Pad, BOS and EOS ids: the runner never picks them as examples."""
    tokenizer = model.tokenizer
    ids = (
        getattr(tokenizer, name, None) for name in ("pad_token_id", "bos_token_id", "eos_token_id")
    )
    return {int(i) for i in ids if i is not None}


def vocab_dict(model: HookedTransformer) -> dict[int, str]:
    """Token id -> display text (`models.token_display`), for every id of the model."""
    from sae_lens_attn.models.token_display import display_vocabulary

    return dict(enumerate(display_vocabulary(model.tokenizer, model.cfg.d_vocab)))


def activation_sites(sae_vis_data: SaeVisData) -> dict[int, list[ExampleSite]]:
    """(prompt, position, activation) of every sequence of every feature, in the order the
    converter lists them as `activations`."""
    return {
        feature: [
            (seq.original_index, seq.qualifying_token_index, 0.0)
            for group in data.sequence_data.seq_group_data
            for seq in group.seq_data
        ]
        for feature, data in sae_vis_data.feature_data_dict.items()
    }


def _rounded(values: Sequence[float]) -> list[float]:
    """To 3 decimals with NumPy, as the converter rounds its own values (`round_list`)."""
    import numpy as np

    return np.round(np.asarray(values, dtype=np.float64), 3).tolist()


def add_dfa_fields(activation: dict[str, Any], dfa: torch.Tensor, bias: float) -> None:
    """Neuronpedia's DFA fields of one activation from our DFA `[dest + 1, n_heads]` at
    its target token, in the converter's convention (positions from 1: BOS dropped)."""
    by_source = dfa.sum(dim=-1).tolist()
    n_tokens = len(activation["tokens"])  # positions 1..seq-1 of the prompt
    values = _rounded(by_source[1:] + [0.0] * (n_tokens + 1 - len(by_source)))  # causal: 0 after
    activation["dfa_values"] = values
    activation["dfa_maxValue"] = max(values) if values else 0.0
    activation["dfa_targetIndex"] = dfa.shape[0] - 2
    activation["dfa_head_totals"] = _rounded(dfa.sum(dim=0).tolist())
    activation["dfa_bias"] = round(bias, 3)


def model_head_shares(shares: Sequence[float], layout: HeadLayout) -> list[float]:
    """Per-head shares of the SAE's heads as a list over all heads of the layer (0 for
    heads the SAE does not read): sae_dashboard's `decoder_weights_dist` indexing."""
    full = [0.0] * layout.n_model_heads
    for head, share in zip(layout.heads, shares, strict=True):
        full[head] = float(share)
    return full


def batch_document(
    model: HookedTransformer,
    sae: SAE,
    layout: HeadLayout,
    tokens: torch.Tensor,
    features: Sequence[int],
    settings: NeuronpediaSettings,
    families: Sequence[FamilyRow] | None = None,
    vocab: dict[int, str] | None = None,
    *,
    dense: SAE | None = None,
    activations: PromptActivations | None = None,
) -> dict[str, Any]:
    """One Neuronpedia batch (`NeuronpediaDashboardBatch` as a dict) for live `features`,
    with our fields added (see the module docstring). `dense` and `activations`: the
    dashboard copy of `sae` and the one pass over `tokens`, made once for all batches
    (default: made for this batch)."""
    from sae_dashboard.neuronpedia.neuronpedia_converter import NeuronpediaConverter

    from sae_lens_attn.attribution.heads import sae_head_attribution
    from sae_lens_attn.dashboard.config import DashboardConfig
    from sae_lens_attn.dashboard.data import sites_dfa
    from sae_lens_attn.dashboard.sae_vis import run_sae_vis

    config = DashboardConfig(
        minibatch_size_tokens=settings.minibatch_size_tokens,
        minibatch_size_features=settings.minibatch_size_features,
        device=settings.device,
    )
    vis = run_sae_vis(
        model,
        sae,
        layout,
        tokens,
        list(features),
        config,
        vis_layout=neuronpedia_layout(settings),
        ignore_tokens=ignored_tokens(model),
        dense=dense,
        activations=activations,
    )
    vocab = vocab if vocab is not None else vocab_dict(model)
    np_cfg = runner_config(settings, layout, Path("."), tokens)
    batch = json.loads(NeuronpediaConverter.convert_to_np_json(model, vis, np_cfg, vocab))
    examples = sites_dfa(model, vis, layout, tokens, activation_sites(vis), activations)
    order = list(vis.feature_data_dict)
    decoder = sae_head_attribution(sae, layout.n_heads, order, side="decoder").cpu().tolist()
    encoder = sae_head_attribution(sae, layout.n_heads, order, side="encoder").cpu().tolist()
    rows = [row.to_dict() for row in families or ()]
    for n, entry in enumerate(batch["features"]):
        feature = entry["feature_index"]
        for activation, example in zip(entry["activations"], examples[feature], strict=True):
            add_dfa_fields(activation, example.dfa, example.dfa_bias)
        entry["decoder_weights_dist"] = model_head_shares(decoder[n], layout)
        entry["head_attribution"] = {
            "heads": layout.head_labels,
            "decoder": _rounded(decoder[n]),
            "encoder": _rounded(encoder[n]),
        }
        entry["families"] = (
            None if families is None else [r for r in rows if r["feature"] == feature]
        )
    batch["hook_name"] = layout.hook_name
    batch["head_layout"] = layout.to_dict()
    return batch


def export_neuronpedia(
    model: HookedTransformer,
    sae: SAE,
    tokens: torch.Tensor,
    out_dir: str | Path,
    settings: NeuronpediaSettings,
    *,
    features: Sequence[int] | None = None,
    families: Sequence[FamilyRow] | None = None,
    layout: HeadLayout | None = None,
    progress: bool = False,
) -> NeuronpediaExport:
    """Write Neuronpedia batch files for `features` (default: all) of a hook_z `sae` into
    `out_dir` (created; an existing folder must be an export of the same settings, whose
    finished batches are kept). tokens: `[n_prompts, seq]` prompts, BOS first.

    Example::

        settings = NeuronpediaSettings(model_id="gpt2-small", sae_set="att-kk")
        export_neuronpedia(model, sae, tokens, "np-export", settings, features=range(256))
    """
    from tqdm.auto import tqdm

    from sae_lens_attn.attribution.logit_lens import dead_rows
    from sae_lens_attn.dashboard.one_pass import PromptActivations
    from sae_lens_attn.dashboard.sae_vis import dashboard_copy
    from sae_lens_attn.sources.head_layout import HeadLayout
    from sae_lens_attn.sources.model_inputs import check_token_rows

    layout = layout or HeadLayout.from_sae(sae, model)
    check_token_rows(tokens, model, "export prompts")
    wanted = list(
        dict.fromkeys(int(f) for f in (range(sae.cfg.d_sae) if features is None else features))
    )
    bad = [f for f in wanted if not 0 <= f < sae.cfg.d_sae]
    if not wanted or bad:
        raise InvalidInputError(
            f"features: {bad[0] if bad else 'none'} is not a feature; this "
            f"SAE has features 0..{sae.cfg.d_sae - 1}"
        )
    dead = dead_rows(sae.W_dec.detach()[wanted]).tolist()
    skipped = tuple(f for f, is_dead in zip(wanted, dead, strict=True) if is_dead)
    live = [f for f, is_dead in zip(wanted, dead, strict=True) if not is_dead]
    folder = Path(out_dir)
    kept = {k: v for k, v in asdict(settings).items() if k != "device"}  # resumable anywhere
    record = {
        EXPORT_MARK: EXPORT_KIND,
        **kept,
        "hook_name": layout.hook_name,
        "head_layout": layout.to_dict(),
        "d_sae": sae.cfg.d_sae,
        "features": wanted,
        "n_prompts_total": int(tokens.shape[0]),
        "n_tokens_in_prompt": int(tokens.shape[1]),
    }
    prepare_export_folder(folder, record)
    atomic_write_text(
        folder / SKIPPED_FILE,
        json.dumps(
            {
                "model_id": settings.model_id,
                "layer": str(layout.layer),
                "sae_set": settings.sae_set,
                "log_sparsity": None,
                "skipped_indexes": list(skipped),
            }
        ),
    )
    vocab = vocab_dict(model)
    batches = [live[i : i + settings.batch_size] for i in range(0, len(live), settings.batch_size)]
    paths = []
    bar = tqdm(total=len(live), desc="neuronpedia", unit="feature", disable=not progress)
    shared: dict[str, Any] = {}  # one dashboard copy and one model pass for every batch
    for number, batch_features in enumerate(batches):
        path = folder / f"batch-{number}.json"
        paths.append(path)
        if not path.is_file():  # resuming: a finished batch is kept, as the runner does
            if not shared:
                shared["dense"] = dashboard_copy(sae, layout)
                shared["activations"] = PromptActivations.collect(
                    model, layout.layer, tokens, settings.minibatch_size_tokens
                )
            document = batch_document(
                model, sae, layout, tokens, batch_features, settings, families, vocab, **shared
            )
            atomic_write_text(path, json.dumps(document, allow_nan=False))
        bar.update(len(batch_features))
    bar.close()
    return NeuronpediaExport(folder, paths, skipped)


def check_export_folder(folder: str | Path) -> dict[str, Any] | None:
    """The settings of the export in `folder` (None when it is missing or empty); a folder
    holding anything else is an `InvalidInputError`, so no file of the user's is touched."""
    folder = Path(folder)
    if not folder.is_dir() or not any(folder.iterdir()):
        return None
    try:
        found = json.loads((folder / SETTINGS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        found = None
    if not isinstance(found, dict) or found.get(EXPORT_MARK) != EXPORT_KIND:
        raise InvalidInputError(
            f"--out {folder}: exists and is not a Neuronpedia export of "
            "sae-lens-attn (no run_settings.json of one); choose a new "
            "or empty folder"
        )
    return found


def prepare_export_folder(folder: Path, record: dict[str, Any]) -> None:
    """Create `folder` with `run_settings.json`, or accept it when it already holds an
    export with the same settings; anything else there is an `InvalidInputError`."""
    found = check_export_folder(folder)
    if found is not None:
        if found != record:
            changed = sorted(k for k in set(found) | set(record) if found.get(k) != record.get(k))
            raise InvalidInputError(
                f"--out {folder}: holds an export with other settings "
                f"({', '.join(changed)}); choose a new folder to export these"
            )
        return
    atomic_write_text(folder / SETTINGS_FILE, json.dumps(record, indent=2))
