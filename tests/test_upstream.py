"""Pins for the upstream bugs `sae_lens_attn._upstream` works around. When a pin fails,
upstream has changed: re-check the workaround and remove it if it is no longer needed."""

import sys

import datasets
import datasets.config
import pytest
import sae_lens  # noqa: F401  (imports torchvision, through decode-clt, as in real use)

from sae_lens_attn._upstream import disable_datasets_torchvision_formatting


def torch_formatted_row():
    dataset = datasets.Dataset.from_dict({"input_ids": [[1, 2, 3, 4]]})
    dataset.set_format(type="torch", columns=["input_ids"])
    return dataset[0]["input_ids"]


@pytest.mark.skipif("torchvision" not in sys.modules, reason="the bug needs torchvision imported")
def test_datasets_torch_formatting_breaks_on_torchvision_without_videoreader(monkeypatch):
    monkeypatch.setattr(datasets.config, "TORCHVISION_AVAILABLE", True)
    try:
        from torchvision.io import VideoReader  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="VideoReader"):
            torch_formatted_row()
    else:
        pytest.fail("torchvision has VideoReader again: disable_datasets_torchvision_formatting may go")


def test_workaround_lets_saelens_read_torch_formatted_rows(monkeypatch):
    monkeypatch.setattr(datasets.config, "TORCHVISION_AVAILABLE", True)
    disable_datasets_torchvision_formatting()
    assert torch_formatted_row().tolist() == [1, 2, 3, 4]
