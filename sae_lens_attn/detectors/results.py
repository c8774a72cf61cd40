"""Detector results: one `FamilyRow` per feature and detector, saved as CSV and JSON.

`families.csv` has the columns `detector, feature, family, score, evidence` (evidence as a
JSON object). `families.json` holds `{"summary": ..., "rows": [...]}`, the summary being
`family_summary(rows)`; with taxonomy rows also `heads` (`{"L1H0": {class: count}}`),
`heads_token_specific` (the same, counting token-specific sub-labels), `heads_fractional`
(dense SAEs) and `head_polysemanticity` (`detectors.heads_table`), and
with per-head evals `head_evals` (`{"L1H0": {"explained_variance", "ce_loss_recovered",
"l0", "dead_share", ...}}`, `attribution.head_evals`). Both read back with
`load_family_rows`.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from sae_lens_attn._atomic import atomic_write_text
from sae_lens_attn._safe_output import read_csv_cell, write_csv
from sae_lens_attn.detectors.classes import FamilyRow

__all__ = [
    "CSV_NAME",
    "JSON_NAME",
    "FamilyRow",
    "family_summary",
    "load_family_rows",
    "save_family_rows",
]

CSV_NAME = "families.csv"
JSON_NAME = "families.json"
_COLUMNS = ("detector", "feature", "family", "score", "evidence")


def family_summary(rows: Iterable[FamilyRow]) -> dict[str, dict[str, Any]]:
    """Per detector: features seen, live features, and each family's count and share.

    `{detector: {"features": n, "live": n_live, "families": {family: {"count": c,
    "share_of_live": c / n_live}}}}`; shares are of live features (see each detector for
    what "live" means there).
    """
    by_detector: dict[str, list[FamilyRow]] = {}
    for row in rows:
        by_detector.setdefault(row.detector, []).append(row)
    summary = {}
    for detector, detector_rows in sorted(by_detector.items()):
        n_live = sum(row.live for row in detector_rows)
        counts = Counter(row.family for row in detector_rows if row.family is not None)
        summary[detector] = {
            "features": len(detector_rows),
            "live": n_live,
            "families": {
                family: {"count": count, "share_of_live": count / n_live if n_live else 0.0}
                for family, count in sorted(counts.items())
            },
        }
    return summary


def save_family_rows(
    rows: Sequence[FamilyRow],
    out_dir: str | Path,
    skipped_nonfinite: Sequence[int] = (),
    head_evals: dict[str, dict[str, float]] | None = None,
) -> tuple[Path, Path]:
    """Write `families.csv` and `families.json` into `out_dir` (created if needed), each
    atomically, CSV cells neutralised against spreadsheet formulas. `skipped_nonfinite`:
    features left out for NaN/inf weights, listed in `families.json`; `head_evals`
    (`HeadEvals.to_dict()`) goes into `families.json` as it is."""
    out_dir = Path(out_dir)
    records = [row.to_dict() for row in rows]
    csv_path, json_path = out_dir / CSV_NAME, out_dir / JSON_NAME
    from sae_lens_attn.detectors.heads_table import heads_table

    summary: dict[str, Any] = {"summary": family_summary(rows),
                               "skipped_nonfinite_features": [int(f) for f in skipped_nonfinite]}
    table = heads_table(rows)
    if table:
        summary["heads"] = table["counts"]
        summary["heads_token_specific"] = table["token_specific"]
        if "fractional" in table:
            summary["heads_fractional"] = table["fractional"]
        summary["head_polysemanticity"] = table["polysemanticity"]
    if head_evals:
        summary["head_evals"] = head_evals
    document = json.dumps({**summary, "rows": records}, indent=1, allow_nan=False)
    csv_rows = [
        {
            **record,
            "family": record["family"] or "",
            "score": "" if record["score"] is None else record["score"],
            "evidence": json.dumps(record["evidence"], sort_keys=True),
        }
        for record in records
    ]
    write_csv(csv_path, csv_rows, _COLUMNS)
    atomic_write_text(json_path, document)
    return csv_path, json_path


def load_family_rows(path: str | Path) -> list[FamilyRow]:
    """Rows from `families.json`, `families.csv`, or a folder holding either."""
    path = Path(path)
    if path.is_dir():
        candidates = [path / JSON_NAME, path / CSV_NAME]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise ValueError(f"{path} holds neither {JSON_NAME} nor {CSV_NAME}")
        path = found
    if path.suffix == ".json":
        document = json.loads(path.read_text(encoding="utf-8"))
        records = document["rows"] if isinstance(document, dict) else document
        return [FamilyRow.from_dict(record) for record in records]
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            records = [{key: read_csv_cell(value) for key, value in record.items()}
                       for record in csv.DictReader(handle)]
            return [
                FamilyRow.from_dict({**record, "evidence": json.loads(record["evidence"] or "{}")})
                for record in records
            ]
    raise ValueError(f"expected a .json or .csv file or a folder, got {path}")
