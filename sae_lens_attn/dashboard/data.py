"""Per-feature data for our panels: DFA of the shown top examples, head attribution,
logit-lens summary and detector verdicts (`FeatureReport`s).

The top examples are the ones sae_dashboard picked for its "TOP ACTIVATIONS" group
(prompt index and position of each), so the DFA panel explains exactly the sequences the
page shows. Only the prompts those examples come from are run again, in minibatches,
caching just `hook_pattern` and `hook_v` of the SAE's layer, unless the one pass over the
prompts (`one_pass.PromptActivations`) kept them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from sae_lens_attn.attribution.dfa import dfa_hook_names, site_dfa
from sae_lens_attn.attribution.heads import sae_head_attribution
from sae_lens_attn.attribution.logit_lens import (
    feature_output_directions,
    logit_weight_stats,
    top_logit_tokens,
    unembed_through_final_ln,
)
from sae_lens_attn.dashboard.panels import FeatureReport, LogitLensSummary, TopExample
from sae_lens_attn.sources.head_layout import HeadLayout

if TYPE_CHECKING:
    from sae_dashboard.sae_vis_data import SaeVisData
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

    from sae_lens_attn.dashboard.one_pass import PromptActivations
    from sae_lens_attn.detectors.classes import FamilyRow

# (prompt index, destination position, activation) of one shown example
ExampleSite = tuple[int, int, float]


def shown_top_examples(sae_vis_data: SaeVisData, n: int | None) -> dict[int, list[ExampleSite]]:
    """The first `n` (None: all) sequences of each feature's top-activations group."""
    buffer = sae_vis_data.cfg.feature_centric_layout.seq_cfg.buffer
    sites: dict[int, list[ExampleSite]] = {}
    for feature, feature_data in sae_vis_data.feature_data_dict.items():
        groups = feature_data.sequence_data.seq_group_data
        shown = groups[0].seq_data[:n] if groups else []
        sites[feature] = [
            (
                seq.original_index,
                seq.qualifying_token_index,
                float(seq.feat_acts[buffer[0] if buffer else seq.qualifying_token_index]),
            )
            for seq in shown
        ]
    return sites


def _attention_chunks(
    model: HookedTransformer,
    layer: int,
    tokens: torch.Tensor,
    prompts: list[int],
    batch_size: int,
    activations: PromptActivations | None,
) -> Iterator[tuple[list[int], dict[int, int], torch.Tensor, torch.Tensor]]:
    """(prompts, row of each prompt, pattern, v) of the layer's attention for `prompts`:
    all at once from the one pass's cache when it kept them, else by running the model on
    `batch_size` prompts at a time."""
    if activations is not None and activations.pattern is not None:
        yield prompts, {p: p for p in prompts}, activations.pattern, activations.v
        return
    pattern_name, v_name = dfa_hook_names(layer)
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        _, cache = model.run_with_cache(
            tokens[chunk].to(model.cfg.device),
            names_filter=[pattern_name, v_name],
            stop_at_layer=layer + 1,
        )
        yield chunk, {p: i for i, p in enumerate(chunk)}, cache[pattern_name], cache[v_name]


@torch.no_grad()
def example_dfa(
    model: HookedTransformer,
    sae: SAE,
    layout: HeadLayout,
    tokens: torch.Tensor,
    sites: dict[int, list[ExampleSite]],
    batch_size: int = 32,
    activations: PromptActivations | None = None,
) -> dict[int, list[TopExample]]:
    """DFA by source position and head of each site: `{feature: [TopExample, ...]}`.

    `sae` must be the SAE whose activations the sites were ranked by (sae_dashboard's
    copy, same activations as the SAE as given), so that each example's DFA adds up to its
    activation's pre-activation. `activations`: the one pass over `tokens`, whose kept
    attention pattern and values are read instead of running the model again.
    """
    prompts = sorted({prompt for found in sites.values() for prompt, _, _ in found})
    by_prompt: dict[int, list[tuple[int, int]]] = defaultdict(list)  # prompt -> (feature, i)
    for feature, found in sites.items():
        for i, (prompt, _, _) in enumerate(found):
            by_prompt[prompt].append((feature, i))
    results: dict[int, list[TopExample | None]] = {f: [None] * len(s) for f, s in sites.items()}
    device = sae.b_dec.device
    for chunk, rows, pattern, v in _attention_chunks(
        model, layout.layer, tokens, prompts, batch_size, activations
    ):
        items = [(feature, i) for prompt in chunk for feature, i in by_prompt[prompt]]
        where = [sites[feature][i] for feature, i in items]
        if not items:
            continue
        dfa = site_dfa(
            sae,
            pattern.to(device),
            v.to(device),
            torch.tensor([rows[prompt] for prompt, _, _ in where]),
            torch.tensor([feature for feature, _ in items]),
            torch.tensor([position for _, position, _ in where]),
            layout,
        )
        terms, biases = dfa.by_source_head.cpu(), dfa.bias.tolist()
        for e, ((feature, i), (prompt, position, activation)) in enumerate(
            zip(items, where, strict=True)
        ):
            results[feature][i] = TopExample(
                prompt_index=prompt,
                dest=position,
                activation=activation,
                token_ids=tuple(tokens[prompt, : position + 1].tolist()),
                dfa=terms[e, : position + 1],
                dfa_bias=biases[e],
            )
    return {feature: [ex for ex in found if ex is not None] for feature, found in results.items()}


def sites_dfa(
    model: HookedTransformer,
    sae_vis_data: SaeVisData,
    layout: HeadLayout,
    tokens: torch.Tensor,
    sites: dict[int, list[ExampleSite]],
    activations: PromptActivations | None = None,
) -> dict[int, list[TopExample]]:
    """`example_dfa` of `sites` through the SAE sae_dashboard ran on (`sae_vis_data.encoder`),
    its DFA over the heads of `layout` (the SAE's own), also when sae_dashboard ran on a
    copy widened to all heads of the layer. `activations`: the one pass over `tokens`."""
    encoder = sae_vis_data.encoder
    if encoder.cfg.d_in == layout.d_in:
        return example_dfa(model, encoder, layout, tokens, sites, activations=activations)
    wide = HeadLayout.for_model(model, layout.layer)
    found = example_dfa(model, encoder, wide, tokens, sites, activations=activations)
    return {
        feature: [replace(ex, dfa=ex.dfa[:, list(layout.heads)]) for ex in examples]
        for feature, examples in found.items()
    }


@torch.no_grad()
def logit_lens_summaries(
    model: HookedTransformer,
    sae: SAE,
    layout: HeadLayout,
    features: Sequence[int],
    k: int,
    unembed: torch.Tensor | None = None,
) -> list[LogitLensSummary]:
    """Logit-lens statistics and top/bottom tokens of `features` through `W_O`, the final
    LayerNorm's linear part and `W_U`, as the logit-lens detector computes them.
    `unembed`: `unembed_through_final_ln(model)`, made once by a caller with many batches."""
    index = torch.as_tensor(list(features), device=sae.b_dec.device)
    W_O = model.W_O[layout.layer][list(layout.heads)].detach()
    directions = feature_output_directions(sae.W_dec[index].detach(), W_O.to(sae.W_dec.device))
    W_U = unembed if unembed is not None else unembed_through_final_ln(model)
    stats = logit_weight_stats(directions, W_U)
    top_v, top_i, bottom_v, bottom_i = top_logit_tokens(directions, W_U, min(k, W_U.shape[1]))
    return [
        LogitLensSummary(
            mean=float(stats.mean[n]),
            std=float(stats.std[n]),
            skewness=float(stats.skewness[n]),
            kurtosis=float(stats.kurtosis[n]),
            top=tuple(zip(top_i[n].tolist(), top_v[n].tolist(), strict=True)),
            bottom=tuple(zip(bottom_i[n].tolist(), bottom_v[n].tolist(), strict=True)),
        )
        for n in range(len(index))
    ]


def feature_reports(
    model: HookedTransformer,
    sae: SAE,
    layout: HeadLayout,
    tokens: torch.Tensor,
    sae_vis_data: SaeVisData,
    n_examples: int | None,
    n_logit_tokens: int,
    families: Sequence[FamilyRow] | None = None,
    activations: PromptActivations | None = None,
    unembed: torch.Tensor | None = None,
) -> list[FeatureReport]:
    """One `FeatureReport` per feature of `sae_vis_data`, in its order. `activations`: the
    one pass over `tokens` that `sae_vis_data` was built from (DFA reads its attention);
    `unembed`: `unembed_through_final_ln(model)`, made once for many calls."""
    features = list(sae_vis_data.feature_data_dict)
    sites = shown_top_examples(sae_vis_data, n_examples)
    examples = sites_dfa(model, sae_vis_data, layout, tokens, sites, activations)
    decoder = sae_head_attribution(sae, layout.n_heads, features, side="decoder").cpu()
    encoder = sae_head_attribution(sae, layout.n_heads, features, side="encoder").cpu()
    lens = logit_lens_summaries(model, sae, layout, features, n_logit_tokens, unembed)
    rows_by_feature: dict[int, list[FamilyRow]] = defaultdict(list)
    for row in families or ():
        rows_by_feature[row.feature].append(row)
    return [
        FeatureReport(
            feature=feature,
            examples=examples[feature],
            decoder_heads=decoder[n].tolist(),
            encoder_heads=encoder[n].tolist(),
            logit_lens=lens[n],
            families=rows_by_feature[feature],
        )
        for n, feature in enumerate(features)
    ]
