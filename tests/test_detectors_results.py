"""Detector results round-trip through families.csv / families.json."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from sae_lens_attn.detectors.results import (
    FamilyRow,
    family_summary,
    load_family_rows,
    save_family_rows,
)

ROWS = [
    FamilyRow("induction", 0, "induction", 0.9, {"token": 5, "heads": {"0": 1.0}, "live": True}),
    FamilyRow("induction", 1, None, 0.0, {"live": False, "summary": "never fires"}),
    FamilyRow("induction", 2, None, -0.25, {"rates": [0.5, 0.75]}),
    FamilyRow("logit_lens", 0, "prediction", float("nan"), {"skewness": 4.5}),
]


@pytest.mark.parametrize("which", ["families.csv", "families.json", "."])
def test_rows_read_back_equal_to_what_was_saved(tmp_path, which):
    csv_path, json_path = save_family_rows(ROWS, tmp_path)
    assert (csv_path.name, json_path.name) == ("families.csv", "families.json")
    loaded = load_family_rows(tmp_path / which)
    assert [(r.detector, r.feature, r.family, r.evidence) for r in loaded] == [
        (r.detector, r.feature, r.family, r.evidence) for r in ROWS
    ]
    assert [r.score for r in loaded[:3]] == [0.9, 0.0, -0.25] and math.isnan(loaded[3].score)


def test_tensor_and_numpy_evidence_is_saved_as_plain_json(tmp_path):
    row = FamilyRow("x", 3, "f", 1.0, {"t": torch.tensor([1.5, 2.0]), "n": np.int64(4)})
    _, json_path = save_family_rows([row], tmp_path)
    assert json.loads(json_path.read_text())["rows"][0]["evidence"] == {"t": [1.5, 2.0], "n": 4}


def test_summary_gives_each_family_share_of_live_features(tmp_path):
    summary = family_summary(ROWS)
    assert summary["induction"] == {
        "features": 3,
        "live": 2,
        "families": {"induction": {"count": 1, "share_of_live": 0.5}},
    }
    _, json_path = save_family_rows(ROWS, tmp_path)
    assert json.loads(json_path.read_text())["summary"] == summary


def test_loading_a_folder_without_results_says_what_it_expected(tmp_path):
    with pytest.raises(ValueError, match="neither families.json nor families.csv"):
        load_family_rows(tmp_path)
