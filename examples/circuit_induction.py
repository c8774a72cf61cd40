"""The circuit of "<t> is next by induction" features on the embedded model, written up.

    python examples/circuit_induction.py --out circuit_induction
    python examples/circuit_induction.py --quick   # tiny SAE (seconds): checks that it runs

1. Train a hook_z SAE on layer 1 of the embedded model with SAELens's runner
   (`train_hook_z_sae`) on the embedded corpus.
2. Find "<t> is next by induction" features with the induction detector.
3. For each (strongest first), build prompts `BOS f.. A t f.. A f..` (the detector's
   `induction_prompts`) and run the circuit attribution at the second `A`. The claims:
   the top value-side source is `t`'s position (the token after the earlier `A`), and the
   feature's direct effect on the logits promotes `t`.
4. Write `report.md` (the claims, checked on every prompt), `features.csv`, and for the
   strongest feature's first prompt the tables and plots `sae-lens-attn circuit` writes.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import torch

from sae_lens_attn.attribution.circuit import FeatureCircuit, feature_circuit
from sae_lens_attn.attribution.circuit.downstream import as_hooked_sae_transformer
from sae_lens_attn.commands.circuit import write_circuit
from sae_lens_attn.detectors.induction import FAMILY, InductionDetector
from sae_lens_attn.detectors.induction_prompts import induction_prompts
from sae_lens_attn.models import EMBEDDED_DIR, load_embedded_model
from sae_lens_attn.models.dataset import corpus_tokens
from sae_lens_attn.models.token_display import token_display_fn
from sae_lens_attn.training.train import train_hook_z_sae

LAYER = 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("circuit_induction"))
    parser.add_argument("--model-folder", type=Path, default=EMBEDDED_DIR,
                        help="embedded-model folder (default: the one shipped with the package)")
    parser.add_argument("--architecture", default="standard", choices=["standard", "block_diagonal"])
    parser.add_argument("--training-tokens", type=int, default=1_000_000)
    parser.add_argument("--l1-coefficient", type=float, default=2.0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--expansion-factor", type=int, default=8)
    parser.add_argument("--features", type=int, default=10, help="induction features checked")
    parser.add_argument("--prompts", type=int, default=16, help="prompts per feature")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="16k training tokens, expansion 2, 1 feature x 2 prompts")
    args = parser.parse_args(argv)
    if args.quick:
        args.training_tokens, args.expansion_factor, args.features, args.prompts = 16_384, 2, 1, 2
    return args


def token_pool(model) -> torch.Tensor:
    """Every token id but the tokenizer's special ones."""
    pool = torch.ones(model.cfg.d_vocab, dtype=torch.bool)
    pool[[i for i in model.tokenizer.all_special_ids if i < model.cfg.d_vocab]] = False
    return pool.nonzero().flatten()


def check_feature(model, sae, feature: int, token: int, n_prompts: int, seed: int):
    """Circuits of `feature` at the second `A` of `n_prompts` prompts `A token .. A`."""
    prompts = induction_prompts(
        torch.full((n_prompts,), token), token_pool(model), n_prompts=1, pairs_per_sequence=1,
        gap=6, bos_token_id=model.tokenizer.bos_token_id, seed=seed,
    )
    results = []
    for tokens, dest, first in zip(
        prompts.tokens, prompts.test_positions[:, 0], prompts.first_positions[:, 0], strict=True
    ):
        circuit = feature_circuit(model, sae, tokens, feature, destination=int(dest))
        effect, fires = circuit.downstream, circuit.activation > 0
        direct, total = effect.direct[int(dest)], effect.total[int(dest)]
        results.append({
            "circuit": circuit,
            "fires": fires,
            "t_position": int(first) + 1,
            "top_source_is_t": fires and circuit.top_sources[0] == int(first) + 1,
            # rank of t among all tokens (0: promoted most); only meaningful when it fires
            "direct_rank": int((direct > direct[token]).sum()) if fires else None,
            "total_rank": int((total > total[token]).sum()) if fires else None,
        })
    return results


def describe(circuit: FeatureCircuit, position: int) -> tuple[str, str, str]:
    """The value-side component at `position` that contributes most, and the query / key
    terms that raise the top head's score on the top source most."""
    value = circuit.value
    top_value = value.labels[int(value.terms[:, position].sum(-1).argmax())]
    qk = circuit.query_key
    return (
        top_value,
        f"H{qk.head}: {qk.query_labels[int(qk.query_totals.argmax())]}",
        f"H{qk.head}: {qk.key_labels[int(qk.key_totals.argmax())]}",
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    model = as_hooked_sae_transformer(load_embedded_model(args.model_folder))
    decode = token_display_fn(model.tokenizer)
    context = model.cfg.n_ctx
    dataset = corpus_tokens(model.tokenizer, context, args.training_tokens // context + 1)
    sae, layout = train_hook_z_sae(
        model, LAYER, architecture=args.architecture, dataset=dataset,
        training_tokens=args.training_tokens, expansion_factor=args.expansion_factor,
        lr=args.lr, sae_kwargs={"l1_coefficient": args.l1_coefficient}, seed=args.seed,
    )
    trained = time.perf_counter()
    eval_tokens = corpus_tokens(model.tokenizer, context, 32, split="test")
    rows = InductionDetector().detect(model, sae, layout, tokens=eval_tokens)
    members = sorted((r for r in rows if r.family == FAMILY), key=lambda r: -r.score)
    live = sum(1 for r in rows if r.evidence.get("live"))
    detected = time.perf_counter()

    lines = [
        "# Circuit of induction features on the embedded model",
        "",
        f"SAE: {args.architecture}, d_sae {sae.cfg.d_sae}, on `{layout.hook_name}`, trained "
        f"on {args.training_tokens:,} tokens ({trained - start:.0f} s with model loading). "
        f"Induction detector: {len(members)} of {live} live features are "
        f'"<t> is next by induction" ({detected - trained:.0f} s).',
        "",
    ]
    if not members:
        lines.append("No induction-family feature was found, so there is no circuit to check.")
        (args.out / "report.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
        return

    table = []
    for row in members[: args.features]:
        token = row.evidence["token"]
        results = check_feature(model, sae, row.feature, token, args.prompts, args.seed)
        first = results[0]
        top_value, top_query, top_key = describe(first["circuit"], first["t_position"])
        table.append({
            "feature": row.feature,
            "token": decode(token),
            "detector_score": round(row.score, 3),
            "prompts": len(results),
            "fires": sum(r["fires"] for r in results),
            "top_source_is_t": sum(r["top_source_is_t"] for r in results),
            "t_top1_direct": sum(r["direct_rank"] == 0 for r in results),
            "t_top1_total": sum(r["total_rank"] == 0 for r in results),
            "value_component_at_t": top_value,
            "query_term": top_query,
            "key_term": top_key,
        })
        if len(table) == 1:
            write_circuit(results[0]["circuit"], args.out / f"feature_{row.feature}", decode)
    with (args.out / "features.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)

    n = sum(row["prompts"] for row in table)
    lines += [
        f"For the {len(table)} strongest features, {args.prompts} prompts each "
        "`BOS f.. A t f.. A f..` (random tokens; `t` the feature's token), circuit attribution "
        "at the second `A`:",
        "",
        f"- the feature fires there in {sum(r['fires'] for r in table)}/{n} prompts;",
        f"- the top value-side source is `t`'s position (the token after the earlier `A`) in "
        f"{sum(r['top_source_is_t'] for r in table)}/{n};",
        f"- `t` is the token the feature's direct effect promotes most in "
        f"{sum(r['t_top1_direct'] for r in table)}/{n}, and in total (ablation) in "
        f"{sum(r['t_top1_total'] for r in table)}/{n}.",
        "",
        "| feature | t | detector score | fires | top source is t | t top-1 direct | "
        "t top-1 total | value term at t | top query term | top key term |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['feature']} | `{r['token']!r}` | {r['detector_score']} | {r['fires']}/{r['prompts']} "
        f"| {r['top_source_is_t']}/{r['prompts']} | {r['t_top1_direct']}/{r['prompts']} | "
        f"{r['t_top1_total']}/{r['prompts']} | {r['value_component_at_t']} | {r['query_term']} | "
        f"{r['key_term']} |"
        for r in table
    ]
    lines += [
        "",
        "Value term at t: the residual component at `t`'s position that writes most into the "
        "feature through the top head's W_V (first prompt). Query / key terms: what raises "
        "that head's attention score from the second `A` to `t` most, at the destination and "
        f"at `t`. Tables and plots of feature {table[0]['feature']}'s first prompt: "
        f"`feature_{table[0]['feature']}/`. Total time {time.perf_counter() - start:.0f} s.",
    ]
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
