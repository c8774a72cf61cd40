"""Built-in activation source plugin: `hook_z` (entry point `hook_z`). Cheap to import."""

from __future__ import annotations

from sae_lens_attn.plugins import PluginEntry, hookimpl


def _load_hook_z_source() -> type:
    from sae_lens_attn.sources.hook_z import HookZSource

    return HookZSource


@hookimpl
def sae_lens_attn_activation_sources() -> list[PluginEntry]:
    return [
        PluginEntry(
            "hook_z",
            "blocks.L.attn.hook_z of all or some heads, head-major, stop-early forward",
            load=_load_hook_z_source,
        )
    ]
