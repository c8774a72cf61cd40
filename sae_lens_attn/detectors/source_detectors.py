"""Five detectors that read a feature's source signature (`detectors.signature`).

Each decides one family from where the feature's DFA mass sits and from how it fires on
the evaluation corpus (default: the embedded corpus's test split, 64 rows of 128 tokens).
All five share one model pass (`source_signatures` caches it). The thresholds are keyword
options with these defaults and reasons:

- `min_dfa_share=0.5`: the family's source category must hold at least half of the
  positive DFA at the feature's top activations (a majority: no other source can hold
  as much).
- `min_token_consistency=0.8`: token-specific families need 4 in 5 top examples to read
  a token of the feature's token set (at most `token_set_size=4` tokens): one outlier
  in 5 is tolerated, a feature reading arbitrary tokens is not.
- `min_rate=0.5`: where its condition holds (e.g. the previous token is in the set) the
  feature fires at least half the time: it is what the feature responds to, not a
  coincidence of a few contexts.
- `min_precision=0.8`: at least 80% of its activation mass (activations summed over the
  positions where it fires) lies where the condition holds; 20% slack for the weak
  firings around a feature's real trigger, and what separates a "previous token is X"
  feature from a "somewhere in the last few tokens is X" one.
- `max_control_rate=0.1`: on controls (first occurrences for duplicate-token, positions
  far from any trigger for local context) it fires at most 1 time in 10, as the
  `induction` detector's controls.
- `min_context_length=2`: a local context covers at least two consecutive positions
  after its trigger (one position is the previous-token family).
- `max_local_sources=3.0` / `min_effective_sources=4.0`: the participation ratio of
  positive DFA over source positions; a local-context feature reads about one trigger
  (<= 3 effective sources), a high-level context feature spreads over at least 4.
- `min_document_coverage=0.5` and `max_document_share=0.5`: a high-level context feature
  fires on at least half of the positions after its onset in a document, and in at most
  half of the documents (always-on features are not a context).

Rows carry `evidence["summary"]` (one line, head labels `L{layer}H{head}`), the DFA share
by source category, the token set and the rates behind the decision. Features that never
fire on the tokens, or whose decoder row is zero, get `live = False` rows.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import torch

from sae_lens_attn.attribution.heads import sae_head_attribution
from sae_lens_attn.detectors.base import (
    display_token,
    feature_index,
    resolve_layout,
    token_strings_of,
)
from sae_lens_attn.detectors.classes import FamilyRow
from sae_lens_attn.detectors.signature import (
    CATEGORIES,
    CATEGORY_LABELS,
    SignatureOptions,
    SourceSignatures,
    source_signatures,
)

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

    from sae_lens_attn.sources.head_layout import HeadLayout

__all__ = [
    "CLASS_CATEGORIES",
    "CurrentTokenDetector",
    "DuplicateTokenDetector",
    "HighLevelContextDetector",
    "LocalContextDetector",
    "PreviousTokenDetector",
    "SignatureThresholds",
    "default_tokens",
    "signatures_for",
]

DEFAULT_EVAL_SEQUENCES = 64
DEFAULT_CONTEXT_SIZE = 128

# Where each class's DFA mass sits (its share is the class's score and the taxonomy's confidence).
CLASS_CATEGORIES: dict[str, tuple[str, ...]] = {
    "current_token": ("current",),
    "previous_token": ("previous",),
    "duplicate_token": ("same_token",),
    "induction": ("induction_target",),
    "local_context": ("previous", "near"),
    "high_level_context": ("same_token", "induction_target", "near", "far"),
}


@dataclass(frozen=True)
class SignatureThresholds:
    """The decision thresholds (see the module docstring for the reasons), validated."""

    min_dfa_share: float = 0.5
    min_token_consistency: float = 0.8
    min_rate: float = 0.5
    min_precision: float = 0.8
    max_control_rate: float = 0.1
    min_context_length: float = 2
    max_local_sources: float = 3.0
    min_effective_sources: float = 4.0
    min_document_coverage: float = 0.5
    max_document_share: float = 0.5

    def __post_init__(self) -> None:
        fractions = ("min_dfa_share", "min_token_consistency", "min_rate", "min_precision",
                     "max_control_rate", "min_document_coverage", "max_document_share")
        for item in fields(self):
            value = float(getattr(self, item.name))
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{item.name} must be a finite non-negative number, got {value}")
            if item.name in fractions and value > 1:
                raise ValueError(f"{item.name} must be in [0, 1], got {value}")

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> SignatureThresholds:
        """The thresholds present in a detector's keyword options (defaults for the rest)."""
        return cls(**{f.name: float(options[f.name]) for f in fields(cls) if f.name in options})


def default_tokens(model: HookedTransformer) -> torch.Tensor:
    """The embedded corpus's test split in the model's tokenizer: `[64, min(128, n_ctx)]`."""
    if getattr(model, "tokenizer", None) is None:
        raise ValueError("source-signature detectors need evaluation tokens: pass tokens=[batch, pos] "
                         "(the model has no tokenizer to read the embedded corpus with)")
    from sae_lens_attn.models.dataset import corpus_tokens

    return corpus_tokens(model.tokenizer, min(DEFAULT_CONTEXT_SIZE, model.cfg.n_ctx), DEFAULT_EVAL_SEQUENCES, "test")


def signatures_for(
    model: HookedTransformer, sae: SAE, layout: HeadLayout | None, options: dict[str, Any]
) -> tuple[HeadLayout, torch.Tensor, SourceSignatures]:
    """`(layout, feature index, signatures)` for a detector's keyword `options` (shared,
    cached pass: the same options give the same object)."""
    layout = resolve_layout(sae, model, layout)
    index = feature_index(sae, options.get("features"))
    tokens = options.get("tokens")
    if tokens is None:
        tokens = default_tokens(model)
    signatures = source_signatures(model, sae, layout, torch.as_tensor(tokens), index,
                                   SignatureOptions.from_options(options), bool(options.get("progress")))
    return layout, index, signatures


def _percent(value: float) -> str:
    return f"{100 * value:.0f}%"


class _SourceDetector(ABC):
    """Shared row building; subclasses give `name`, `family`, `decide` and `explain`."""

    name = ""
    family = ""
    description = ""

    def detect(
        self, model: HookedTransformer, sae: SAE, layout: HeadLayout | None = None, **options: Any
    ) -> list[FamilyRow]:
        """One row per feature (all features unless `features=` is given); `tokens [batch,
        pos]` is the corpus (default: the embedded corpus's test split)."""
        thresholds = SignatureThresholds.from_options(options)
        layout, index, signatures = signatures_for(model, sae, layout, options)
        member, extra = self.decide(signatures, thresholds)
        score = signatures.share(*CLASS_CATEGORIES[self.family])
        heads = sae_head_attribution(sae, layout.n_heads, index.to(sae.b_dec.device)).cpu()
        strings = token_strings_of(model)
        rows = []
        for i, feature in enumerate(index.tolist()):
            if not signatures.live[i]:
                reason = "zero decoder row" if signatures.fires[i] > 0 else "never fires on the evaluation tokens"
                rows.append(FamilyRow(self.name, feature, None, 0.0,
                                      {"live": False, "summary": f"not live: {reason}"}))
                continue
            evidence = feature_evidence(signatures, i, strings)
            evidence.update({key: values[i].item() for key, values in extra.items()})
            top = int(heads[i].argmax())
            evidence["head"] = layout.head_labels[top]
            verdict = self.explain(evidence, bool(member[i]))
            evidence["summary"] = f"{verdict}; {evidence['head']}"
            rows.append(FamilyRow(self.name, feature, self.family if member[i] else None,
                                  score[i].item(), evidence))
        return rows

    @abstractmethod
    def decide(self, s: SourceSignatures, t: SignatureThresholds) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`(member [F] bool, {evidence name: [F] values})` from the signatures."""

    @abstractmethod
    def explain(self, evidence: dict[str, Any], member: bool) -> str:
        """The verdict in one line (the head label is appended)."""


def feature_evidence(s: SourceSignatures, i: int, strings: Sequence[str] | None) -> dict[str, Any]:
    """The signature numbers of the feature at position `i` of `s`, JSON-able."""
    token_set = [t for t in s.token_set[i].tolist() if t >= 0]
    row, position, activation = s.top_example[i].tolist()
    return {
        "live": True,
        "dfa_share": {CATEGORY_LABELS[c]: s.dfa_share[i, j].item() for j, c in enumerate(CATEGORIES)},
        "effective_sources": s.effective_sources[i].item(),
        "n_examples": int(s.n_examples[i]),
        "token_set": token_set,
        "token_set_shown": ", ".join(display_token(strings, t) for t in token_set),
        "token_consistency": s.token_consistency[i].item(),
        "fire_rate": s.fires[i].item() / s.positions,
        "top_example": {"row": int(row), "position": int(position), "activation": activation},
    }


def _token_class(s: SourceSignatures, t: SignatureThresholds, family: str, condition: str) -> tuple[torch.Tensor, dict]:
    rate, precision = s.rate(condition), s.precision(condition)
    member = (
        s.live
        & (s.share(*CLASS_CATEGORIES[family]) >= t.min_dfa_share)
        & (s.token_consistency >= t.min_token_consistency)
        & (rate >= t.min_rate)
        & (precision >= t.min_precision)
    )
    return member, {"rate": rate, "precision": precision}


def _share_text(evidence: dict[str, Any], category: str) -> str:
    return f"{_percent(evidence['dfa_share'][CATEGORY_LABELS[category]])} of DFA at {CATEGORY_LABELS[category]}"


class CurrentTokenDetector(_SourceDetector):
    """"The current token is X": DFA mass at the destination itself (offset 0), a
    consistent token set, firing on most of its occurrences, most activation there."""

    name = family = "current_token"
    description = "current-token features: DFA at the destination, token-specific"

    def decide(self, s, t):
        return _token_class(s, t, self.family, "current")

    def explain(self, evidence, member):
        tokens = evidence["token_set_shown"] or "no token"
        head = "current token is" if member else "not current-token for"
        return (f"{head} {tokens} ({_share_text(evidence, 'current')}; fires on "
                f"{_percent(evidence['rate'])} of its occurrences, {_percent(evidence['precision'])} of activation there)")


class PreviousTokenDetector(_SourceDetector):
    """"The previous token is X": DFA mass at q-1 reading a consistent token (set), firing
    on most positions after it, most activation there."""

    name = family = "previous_token"
    description = "previous-token features: DFA at q-1, token-specific"

    def decide(self, s, t):
        return _token_class(s, t, self.family, "previous")

    def explain(self, evidence, member):
        tokens = evidence["token_set_shown"] or "no token"
        head = "previous token is" if member else "not previous-token for"
        return (f"{head} {tokens} ({_share_text(evidence, 'previous')}; fires after "
                f"{_percent(evidence['rate'])} of its occurrences, {_percent(evidence['precision'])} of activation there)")


class DuplicateTokenDetector(_SourceDetector):
    """"The current token occurred before": DFA mass at the earlier occurrence of the
    current token; fires on repeats of its tokens and not on their first occurrences
    (the control)."""

    name = family = "duplicate_token"
    description = "duplicate-token features: DFA at an earlier copy of the current token, silent on first occurrences"

    def decide(self, s, t):
        repeat, first, precision = s.rate("repeat"), s.rate("first"), s.precision("repeat")
        member = (
            s.live
            & (s.share("same_token") >= t.min_dfa_share)
            & (repeat >= t.min_rate)
            & (first <= t.max_control_rate)
            & (precision >= t.min_precision)
        )
        return member, {"repeat_rate": repeat, "first_occurrence_rate": first, "precision": precision}

    def explain(self, evidence, member):
        tokens = evidence["token_set_shown"] or "no token"
        head = "repeated" if member else "not duplicate-token for"
        return (f"{head} {tokens} ({_share_text(evidence, 'same_token')}; fires on "
                f"{_percent(evidence['repeat_rate'])} of repeats, {_percent(evidence['first_occurrence_rate'])} "
                "of first occurrences)")


def context_length(s: SourceSignatures, min_rate: float) -> torch.Tensor:
    """`[F]`: how many consecutive distances 1, 2, ... after the latest set token the
    feature fires at with rate >= `min_rate` (distances never seen end the run)."""
    tests = s.distance_tests[:, 1:-1]
    rate = torch.where(tests > 0, s.distance_fires[:, 1:-1] / tests.clamp_min(1), 0.0)
    holds = (rate >= min_rate) & (tests > 0)
    return holds.int().cumprod(dim=1).sum(dim=1)


def _outside_context_rate(s: SourceSignatures, length: torch.Tensor) -> torch.Tensor:
    """`[F]`: firing rate at distance > 2 * length from the latest set token (or none)."""
    width = s.distance_tests.shape[1]
    distance = torch.arange(width)[None, :]
    outside = (distance > 2 * length[:, None]) | (distance == width - 1)
    fires = (s.distance_fires * outside).sum(dim=1)
    tests = (s.distance_tests * outside).sum(dim=1)
    return torch.where(tests > 0, fires / tests.clamp_min(1), 0.0)


class LocalContextDetector(_SourceDetector):
    """"In the few tokens after a trigger": DFA mass on a trigger token (set) at a
    variable short distance (previous or near window), fires on a run of at least
    `min_context_length` consecutive positions after the trigger, reads about one source
    (<= `max_local_sources`), and stops: at distances beyond twice its context length (or
    with no trigger within `max_context`) it fires at most `max_control_rate`."""

    name = family = "local_context"
    description = "local-context features: runs of positions after a trigger token, DFA on the trigger"

    def decide(self, s, t):
        length = context_length(s, t.min_rate)
        outside = _outside_context_rate(s, length)
        member = (
            s.live
            & (s.share(*CLASS_CATEGORIES[self.family]) >= t.min_dfa_share)
            & (s.token_consistency >= t.min_token_consistency)
            & (length >= t.min_context_length)
            & (outside <= t.max_control_rate)
            & (s.effective_sources <= t.max_local_sources)
        )
        return member, {"context_length": length.double(), "outside_context_rate": outside,
                        "mean_run_length": s.mean_run_length}

    def explain(self, evidence, member):
        tokens = evidence["token_set_shown"] or "no token"
        head = "in the context after" if member else "not local context of"
        return (f"{head} {tokens} (fires up to {int(evidence['context_length'])} tokens after it, "
                f"{_percent(evidence['outside_context_rate'])} outside; "
                f"{_percent(evidence['dfa_share']['-1'] + evidence['dfa_share']['near window'])} of DFA within "
                "the near window)")


class HighLevelContextDetector(_SourceDetector):
    """"In a document about ...": fires across much of a document once it starts
    (`min_document_coverage`), in a minority of documents (`max_document_share`), with
    diffuse DFA over many source positions (`min_effective_sources`). Whether those
    sources share a topic is not measured: the evidence lists the tokens it reads most."""

    name = family = "high_level_context"
    description = "high-level context features: fire across a document, diffuse DFA over many sources"

    def decide(self, s, t):
        member = (
            s.live
            & (s.effective_sources >= t.min_effective_sources)
            & (s.document_coverage >= t.min_document_coverage)
            & (s.document_share <= t.max_document_share)
        )
        return member, {"document_coverage": s.document_coverage, "document_share": s.document_share}

    def explain(self, evidence, member):
        head = "document context" if member else "not high-level context"
        return (f"{head}: fires on {_percent(evidence['document_coverage'])} of a document after onset, in "
                f"{_percent(evidence['document_share'])} of documents, DFA over "
                f"{evidence['effective_sources']:.1f} effective sources (most: {evidence['token_set_shown'] or 'none'})")
