"""Plugin system: pluggy hook specifications and the one plugin manager.

Every plugin, built-in or third-party, is a module named by an entry point in the group
`sae_lens_attn`. Such a module implements one or more of the hooks below with
`@hookimpl`, each returning a list of `PluginEntry`. An entry carries a `load` callable so
that listing plugins stays cheap: the heavy objects (SAE classes, detectors, panels) are
imported only when a caller asks for them.

A third-party plugin is::

    # my_plugin.py                           pyproject.toml:
    from sae_lens_attn.plugins import PluginEntry, hookimpl
                                             # [project.entry-points.sae_lens_attn]
    @hookimpl                                # my_plugin = "my_plugin"
    def sae_lens_attn_detectors():
        return [PluginEntry("my_family", "what it finds", load=lambda: MyDetector)]
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import pluggy

PROJECT_NAME = "sae_lens_attn"
ENTRY_POINT_GROUP = "sae_lens_attn"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@dataclass(frozen=True)
class PluginEntry:
    """One named thing a plugin contributes.

    `load()` returns the object itself; what that object is depends on the kind:
    an `ArchitectureClasses` for architectures, a source class or factory for activation
    sources, a detector for detectors, a panel for dashboard panels (see those packages).
    """

    name: str
    description: str
    load: Callable[[], Any] = field(compare=False, repr=False)


@dataclass(frozen=True)
class ArchitectureClasses:
    """The four SAELens classes an architecture registers under one name."""

    sae_class: type
    config_class: type
    training_sae_class: type
    training_config_class: type


@dataclass(frozen=True)
class LoadedEntry:
    """A `PluginEntry` together with the kind of hook and the plugin that returned it."""

    kind: str
    plugin: str
    entry: PluginEntry


@dataclass(frozen=True)
class PluginLoadError:
    """A plugin that could not be imported or whose hook raised."""

    plugin: str
    error: str


class HookSpecs:
    """Hook specifications. Each hook is called with no arguments whenever sae_lens_attn
    needs the list of things of its kind, and returns a list of `PluginEntry`."""

    @hookspec
    def sae_lens_attn_architectures(self) -> list[PluginEntry]:
        """SAE architectures. `load()` returns an `ArchitectureClasses`; each is registered
        with SAELens's registry under `name` when sae_lens is imported."""

    @hookspec
    def sae_lens_attn_activation_sources(self) -> list[PluginEntry]:
        """Activation sources for training. `load()` returns the source class."""

    @hookspec
    def sae_lens_attn_detectors(self) -> list[PluginEntry]:
        """Feature-family detectors. `load()` returns a detector (see
        `sae_lens_attn.detectors`)."""

    @hookspec
    def sae_lens_attn_dashboard_panels(self) -> list[PluginEntry]:
        """Extra dashboard panels. `load()` returns a panel (see
        `sae_lens_attn.dashboard`)."""


KIND_TO_HOOK: dict[str, str] = {
    "architecture": "sae_lens_attn_architectures",
    "activation_source": "sae_lens_attn_activation_sources",
    "detector": "sae_lens_attn_detectors",
    "dashboard_panel": "sae_lens_attn_dashboard_panels",
}


class PluginManager(pluggy.PluginManager):
    """pluggy's manager plus the load errors met while reading entry points."""

    def __init__(self) -> None:
        super().__init__(PROJECT_NAME)
        self.add_hookspecs(HookSpecs)
        self.load_errors: list[PluginLoadError] = []

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> None:
        """Import and register every plugin of `group`; a broken one is warned about
        by name and skipped. (pluggy's own `load_setuptools_entrypoints` stops at the
        first plugin that fails to import.)"""
        seen: set[str] = set()
        for ep in sorted(entry_points(group=group), key=lambda ep: ep.name):
            if ep.name in seen or self.get_plugin(ep.name) is not None:
                continue
            seen.add(ep.name)
            try:
                self.register(ep.load(), name=ep.name)
            except Exception as err:
                self._report(ep.name, f"failed to load ({ep.value}): {err!r}")

    def entries(self, kind: str) -> list[LoadedEntry]:
        """Everything of `kind` the plugins provide, first provider wins on a name clash."""
        hook = getattr(self.hook, _hook_name(kind))
        found: dict[str, LoadedEntry] = {}
        for impl in hook.get_hookimpls():  # registration order: entry points by name
            try:
                provided = impl.function() or []
            except Exception as err:
                self._report(impl.plugin_name, f"hook {hook.name} raised {err!r}")
                continue
            for entry in provided:
                if entry.name in found:
                    warnings.warn(
                        f"{kind} {entry.name!r} from plugin {impl.plugin_name!r} ignored: "
                        f"plugin {found[entry.name].plugin!r} already provides it",
                        stacklevel=2,
                    )
                    continue
                found[entry.name] = LoadedEntry(kind, impl.plugin_name, entry)
        return list(found.values())

    def get(self, kind: str, name: str) -> Any:
        """Load the object named `name` of `kind`; unknown names list the valid ones."""
        by_name = {loaded.entry.name: loaded for loaded in self.entries(kind)}
        if name not in by_name:
            valid = ", ".join(sorted(by_name)) or "none installed"
            raise ValueError(f"unknown {kind} {name!r}; available: {valid}")
        return by_name[name].entry.load()

    def _report(self, plugin: str, message: str) -> None:
        self.load_errors.append(PluginLoadError(plugin, message))
        warnings.warn(f"sae_lens_attn plugin {plugin!r} {message}", stacklevel=3)


def _hook_name(kind: str) -> str:
    if kind not in KIND_TO_HOOK:
        raise ValueError(f"unknown plugin kind {kind!r}; expected one of {sorted(KIND_TO_HOOK)}")
    return KIND_TO_HOOK[kind]


@functools.cache
def get_plugin_manager() -> PluginManager:
    """The process-wide plugin manager, with every entry point of `sae_lens_attn` loaded."""
    manager = PluginManager()
    manager.load_entry_points()
    return manager


def register_architectures_with_sae_lens(manager: PluginManager | None = None) -> list[str]:
    """Register every plugin architecture in SAELens's registry; returns the names.

    Idempotent: a name SAELens already knows is left as it is (a warning says so when
    another class holds it). The inference class is registered before the training class
    because `TrainingSAEConfig.__post_init__` looks the inference config up.
    """
    from sae_lens.registry import (
        SAE_CLASS_REGISTRY,
        SAE_TRAINING_CLASS_REGISTRY,
        register_sae_class,
        register_sae_training_class,
    )

    manager = manager or get_plugin_manager()
    registered = []
    for loaded in manager.entries("architecture"):
        name = loaded.entry.name
        try:
            classes: ArchitectureClasses = loaded.entry.load()
        except Exception as err:
            manager._report(loaded.plugin, f"architecture {name!r} failed to load: {err!r}")
            continue
        for registry, register, sae_class, config_class in (
            (SAE_CLASS_REGISTRY, register_sae_class, classes.sae_class, classes.config_class),
            (
                SAE_TRAINING_CLASS_REGISTRY,
                register_sae_training_class,
                classes.training_sae_class,
                classes.training_config_class,
            ),
        ):
            if name not in registry:
                register(name, sae_class, config_class)
            elif registry[name][0] is not sae_class:
                warnings.warn(
                    f"SAELens already has architecture {name!r} ({registry[name][0].__name__}); "
                    f"plugin {loaded.plugin!r} left it as it is",
                    stacklevel=2,
                )
        registered.append(name)
    return registered
