"""Published SAEs by name and models from a local Hugging Face folder, offline.

The hub is replaced by what it leaves on disk (`tests/hub_fixtures.py`): a tiny random
GPT-2 written with `save_pretrained`, and the Hugging Face cache laid out for SAELens's
registered release `gpt2-small-hook-z-kk` with tiny SAEs in its own file format. The CLI
runs in a subprocess with `HF_HOME` on that cache and `HF_HUB_OFFLINE=1`, so SAELens's
registry, its `connor_rob_hook_z` loader, `hf_hub_download` and TransformerLens's
conversion run for real.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from hub_fixtures import KK_RELEASE, lay_out_kk_cache, save_tiny_gpt2

from sae_lens_attn import cli
from sae_lens_attn.models.hf_folder import load_hf_model_folder

HOOK_Z_ID = "blocks.0.hook_z"
RESID_ID = "blocks.1.hook_z"  # its config, in this cache, names a residual-stream hook


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    return save_tiny_gpt2(tmp_path_factory.mktemp("models") / "tiny-gpt2")


@pytest.fixture(scope="module")
def hub_env(tmp_path_factory):
    return lay_out_kk_cache(
        tmp_path_factory.mktemp("hf_home"),
        {HOOK_Z_ID: "blocks.0.attn.hook_z", RESID_ID: "blocks.1.hook_resid_pre"},
    )


def run_cli(args, env):
    return subprocess.run(
        [sys.executable, "-m", "sae_lens_attn.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_model_folder_loads_as_the_same_network(gpt2_folder):
    from transformers import AutoModelForCausalLM

    model = load_hf_model_folder(gpt2_folder)
    reference = AutoModelForCausalLM.from_pretrained(gpt2_folder)
    tokens = torch.randint(1, 300, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(tokens).log_softmax(-1)
        theirs = reference(tokens).logits.log_softmax(-1)
    assert (model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_head) == (2, 4, 16)
    assert model.tokenizer is not None  # the folder's own tokenizer, attached
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def test_export_runs_on_a_published_sae_and_a_model_folder_offline(gpt2_folder, hub_env, tmp_path):
    out = tmp_path / "np"
    result = run_cli(
        [
            "export",
            "neuronpedia",
            "--sae",
            f"{KK_RELEASE}/{HOOK_Z_ID}",
            "--model",
            str(gpt2_folder),
            "--features",
            "0-5",
            "--n-prompts",
            "32",
            "--context-size",
            "24",
            "--out",
            str(out),
            "--threads",
            "1",
        ],
        hub_env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    batch = json.loads((out / "batch-0.json").read_text())
    assert batch["model_id"] == "gpt2-small"  # from the SAE's config, as the runner takes it
    assert batch["hook_name"] == "blocks.0.attn.hook_z"
    assert batch["head_layout"] == {
        "layer": 0,
        "heads": [0, 1, 2, 3],
        "d_head": 16,
        "n_model_heads": 4,
    }
    assert [f["feature_index"] for f in batch["features"]] == [0, 1, 2, 3, 4, 5]


def test_a_sae_that_is_not_on_hook_z_fails_before_the_model_loads(hub_env, tmp_path):
    broken = tmp_path / "broken-model"  # loading this model would fail differently
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    result = run_cli(
        [
            "dashboard",
            "--sae",
            f"{KK_RELEASE}/{RESID_ID}",
            "--model",
            str(broken),
            "--out",
            str(tmp_path / "out"),
            "--threads",
            "1",
        ],
        hub_env,
    )
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line == (
        f"error: --sae {KK_RELEASE}/{RESID_ID}: this SAE reads "
        "'blocks.1.hook_resid_pre', not an attention hook_z (blocks.L.attn.hook_z); "
        "sae-lens-attn works on hook_z SAEs, such as the gpt2-small-hook-z-kk release"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("sae", "expected"),
    [
        (
            "gpt2-small-hook-z-k/blocks.5.hook_z",
            "'gpt2-small-hook-z-k' is not a SAELens pretrained release (closest releases: "
            "gpt2-small-hook-z-kk",
        ),
        (
            "gpt2-small-hook-z-kk/blocks.5.hookz",
            "release 'gpt2-small-hook-z-kk' has no SAE id 'blocks.5.hookz' (closest: blocks.5.hook_z",
        ),
        ("gpt2-small-hook-z-kk", "give the SAE id too, as RELEASE/SAE_ID"),
    ],
)
def test_a_wrong_release_or_id_is_one_line_with_near_matches(sae, expected, tmp_path, capsys):
    for command in (
        ["detect"],
        ["dashboard"],
        ["circuit", "--prompt", "a b", "--feature", "0"],
        ["export", "neuronpedia"],
    ):
        code = cli.main([*command, "--sae", sae, "--out", str(tmp_path / "out")])
        assert code == 2, command
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert line.startswith(f"error: --sae {sae}: ") and expected in line, (command, line)
    assert not (tmp_path / "out").exists()


def test_a_missing_model_folder_is_one_line(tmp_path, capsys):
    code = cli.main(
        [
            "export",
            "neuronpedia",
            "--sae",
            f"{KK_RELEASE}/{HOOK_Z_ID}",
            "--model",
            str(tmp_path / "no-such-model"),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == (
        f"error: --model {tmp_path / 'no-such-model'}: no such model folder (expected "
        "a Hugging Face model folder with config.json, 'embedded' or a "
        "TransformerLens name)"
    )


def test_a_saved_sae_on_another_hook_is_refused_before_the_model_loads(tmp_path, capsys):
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    config = StandardSAEConfig(
        d_in=64, d_sae=8, metadata=SAEMetadata(hook_name="blocks.1.hook_resid_pre")
    )
    StandardSAE(config).save_model(tmp_path / "sae")
    broken = tmp_path / "broken-model"  # loading this model would fail differently
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    code = cli.main(
        [
            "dashboard",
            "--sae",
            str(tmp_path / "sae"),
            "--model",
            str(broken),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(
        f"error: --sae {tmp_path / 'sae'}: this SAE reads 'blocks.1.hook_resid_pre'"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "command",
    [
        ["dashboard", "--features", "0"],
        ["detect"],
        ["atlas"],
        ["export", "neuronpedia"],
        ["circuit", "--feature", "0", "--prompt", "a b"],
    ],
)
def test_hook_z_reshaping_on_a_residual_hook_is_one_line_in_every_command(
    command, tmp_path, capsys
):
    # SAELens refuses to build this SAE ("This method should only be called for hook_z
    # SAEs"): the hook is named before it gets the chance, whatever the reshaping says
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    config = StandardSAEConfig(
        d_in=64, d_sae=8, metadata=SAEMetadata(hook_name="blocks.1.hook_resid_pre")
    )
    StandardSAE(config).save_model(tmp_path / "sae")
    cfg_path = tmp_path / "sae" / "cfg.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["reshape_activations"] = "hook_z"
    cfg_path.write_text(json.dumps(cfg))
    out = ["--out", str(tmp_path / "out")] if command[0] != "circuit" else []
    code = cli.main([*command, "--sae", str(tmp_path / "sae"), *out])
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith(
        f"error: --sae {tmp_path / 'sae'}: this SAE reads 'blocks.1.hook_resid_pre', "
        "not an attention hook_z (blocks.L.attn.hook_z)"
    )
    assert "should only be called" not in "\n".join(lines)
    assert not (tmp_path / "out").exists()


def test_an_upstream_sae_with_hook_z_reshaping_on_a_residual_hook_is_one_line(tmp_path, capsys):
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    from sae_lens_attn.sources.saved_sae import check_saved_sae

    config = StandardSAEConfig(
        d_in=64, d_sae=8, metadata=SAEMetadata(hook_name="blocks.0.hook_resid_pre")
    )
    StandardSAE(config).save_model(tmp_path / "up")
    assert check_saved_sae(tmp_path / "up")["W_enc"] == (64, 8)  # any hook, unless hook_z
    cfg_path = tmp_path / "up" / "cfg.json"
    cfg_path.write_text(
        json.dumps({**json.loads(cfg_path.read_text()), "reshape_activations": "hook_z"})
    )
    with pytest.raises(
        ValueError, match=r"^--upstream-sae X: this SAE reads 'blocks.0.hook_resid_pre'"
    ):
        check_saved_sae(tmp_path / "up", hook_z=False, label="--upstream-sae X")
