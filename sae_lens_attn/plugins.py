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

Built-ins come from the `sae-lens-attn` distribution itself and win every name clash. A
plugin that fails to import (any exception, `SystemExit` included; only
`KeyboardInterrupt` passes through), a hook that raises or returns something other than a
list of `PluginEntry`, and a clashing name are each recorded in `load_errors` by plugin and
entry name and skipped: the other plugins and entries still load.

At `import sae_lens` only architectures are registered (see `_autoload.py`), and only
the built-ins and the modules named in the entry-point group `sae_lens_attn.architectures`
are imported then: a third-party plugin of the general group is imported only when
sae_lens_attn itself asks for plugins.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pluggy

PROJECT_NAME = "sae_lens_attn"
ENTRY_POINT_GROUP = "sae_lens_attn"
# Plugins named here are imported at `import sae_lens` to register their architectures.
ARCHITECTURE_ENTRY_POINT_GROUP = "sae_lens_attn.architectures"
BUILTIN_DISTRIBUTION = "sae-lens-attn"

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
    """The SAELens classes an architecture registers under one name: inference and
    training. A training architecture that saves as another one (as SAELens's BatchTopK
    saves as JumpReLU) leaves the inference classes None."""

    sae_class: type | None
    config_class: type | None
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
    """A plugin, or one entry of it, that was skipped, and why."""

    plugin: str
    error: str


class PluginError(RuntimeError):
    """A plugin entry that was asked for could not be loaded."""


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
    """pluggy's manager plus built-in precedence and the problems met on the way
    (`load_errors`): nothing a plugin does at import or in a hook stops the others."""

    def __init__(self) -> None:
        super().__init__(PROJECT_NAME)
        self.add_hookspecs(HookSpecs)
        self.load_errors: list[PluginLoadError] = []
        self.builtin_plugins: set[str] = set()
        self._entries: dict[str, list[LoadedEntry]] = {}

    def register(self, plugin: Any, name: str | None = None, *, builtin: bool = False) -> str | None:
        """pluggy's `register`; `builtin=True` gives the plugin's entries precedence."""
        registered = super().register(plugin, name)
        if builtin and registered is not None:
            self.builtin_plugins.add(registered)
        self._entries.clear()
        return registered

    def load_entry_points(
        self,
        groups: Iterable[str] = (ENTRY_POINT_GROUP, ARCHITECTURE_ENTRY_POINT_GROUP),
        include: Callable[[str, EntryPoint], bool] = lambda group, ep: True,
    ) -> None:
        """Import and register the plugin modules named in `groups` (those `include`
        accepts), built-ins first. A module that fails to import is recorded by name and
        skipped; pluggy's own `load_setuptools_entrypoints` would stop at the first one."""
        found = [(group, ep) for group in groups for ep in entry_points(group=group)
                 if include(group, ep)]
        found.sort(key=lambda item: (not is_builtin(item[1]), item[1].name, _distribution(item[1])))
        for _, ep in found:
            self._load_entry_point(ep)

    def entries(self, kind: str) -> list[LoadedEntry]:
        """Everything of `kind` the plugins provide, checked entry by entry. On a name
        clash a built-in wins, else the plugin registered first; the loser is recorded."""
        if kind not in self._entries:
            self._entries[kind] = self._collect(kind)
        return list(self._entries[kind])

    def get(self, kind: str, name: str) -> Any:
        """Load the object named `name` of `kind`; unknown names list the valid ones."""
        by_name = {loaded.entry.name: loaded for loaded in self.entries(kind)}
        if name not in by_name:
            valid = ", ".join(sorted(by_name)) or "none installed"
            raise ValueError(f"unknown {kind} {name!r}: available: {valid}")
        loaded = by_name[name]
        try:
            return loaded.entry.load()
        except KeyboardInterrupt:
            raise
        except BaseException as err:
            raise PluginError(
                f"{kind} {name!r} of plugin {loaded.plugin!r} failed to load: {err!r}"
            ) from err

    def _load_entry_point(self, ep: EntryPoint) -> None:
        label = ep.name if is_builtin(ep) else f"{ep.name} ({_distribution(ep)})"
        try:
            plugin = ep.load()
        except KeyboardInterrupt:
            raise
        except BaseException as err:  # SystemExit too: a plugin must not end the program
            self._report(label, f"failed to load ({ep.value}): {err!r}")
            return
        if self.is_registered(plugin):  # the same module named in both groups
            return
        name = ep.name if self.get_plugin(ep.name) is None else f"{_distribution(ep)}:{ep.name}"
        try:
            self.register(plugin, name=name, builtin=is_builtin(ep))
        except Exception as err:  # pluggy's validation of the hook implementations
            self._report(label, f"could not be registered: {err}")

    def _collect(self, kind: str) -> list[LoadedEntry]:
        hook = getattr(self.hook, _hook_name(kind))
        order = [name for name, _ in self.list_name_plugin()]
        impls = sorted(hook.get_hookimpls(), key=lambda impl: (
            impl.plugin_name not in self.builtin_plugins, order.index(impl.plugin_name)))
        found: dict[str, LoadedEntry] = {}
        for impl in impls:
            plugin = impl.plugin_name
            try:
                provided = impl.function()
            except KeyboardInterrupt:
                raise
            except BaseException as err:
                self._report(plugin, f"hook {hook.name} raised {err!r}")
                continue
            if provided is None:
                continue
            if not isinstance(provided, (list, tuple)):
                self._report(plugin, f"hook {hook.name} returned {_short(provided)}: "
                             "expected a list of PluginEntry; skipped")
                continue
            for position, entry in enumerate(provided):
                problem = _entry_problem(entry)
                if problem:
                    self._report(plugin, f"hook {hook.name} entry {position} skipped: {problem}")
                elif entry.name in found:
                    holder = found[entry.name].plugin
                    owner = "built-in plugin" if holder in self.builtin_plugins else "plugin"
                    self._report(plugin, f"{kind} {entry.name!r} clashes with {kind} "
                                 f"{entry.name!r} of {owner} {holder!r}: kept the one of {holder!r}")
                else:
                    found[entry.name] = LoadedEntry(kind, plugin, entry)
        return list(found.values())

    def _report(self, plugin: str, message: str) -> None:
        error = PluginLoadError(plugin, message)
        if error not in self.load_errors:
            self.load_errors.append(error)
            warnings.warn(f"sae_lens_attn plugin {plugin!r} {message}", stacklevel=3)


def is_builtin(ep: EntryPoint) -> bool:
    """Whether `ep` is declared by sae-lens-attn itself (built-ins win name clashes)."""
    return _distribution(ep) == BUILTIN_DISTRIBUTION and ep.value.startswith(f"{PROJECT_NAME}.")


def _distribution(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.name.lower().replace("_", "-") if dist is not None else "unknown distribution"


def _entry_problem(entry: Any) -> str | None:
    """Why `entry` is not a usable `PluginEntry`, or None."""
    if not isinstance(entry, PluginEntry):
        return f"{_short(entry)} is not a PluginEntry"
    if not isinstance(entry.name, str) or not entry.name.strip():
        return f"name {entry.name!r} is not a non-empty string"
    if not callable(entry.load):
        return f"{entry.name!r}: load {_short(entry.load)} is not callable"
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def _hook_name(kind: str) -> str:
    if kind not in KIND_TO_HOOK:
        raise ValueError(f"unknown plugin kind {kind!r}: expected one of {sorted(KIND_TO_HOOK)}")
    return KIND_TO_HOOK[kind]


@functools.cache
def get_plugin_manager() -> PluginManager:
    """The process-wide plugin manager, with every entry point of `sae_lens_attn` loaded."""
    manager = PluginManager()
    manager.load_entry_points()
    return manager


def architecture_plugin_manager() -> PluginManager:
    """A manager with only what `import sae_lens` may import: the modules of the
    `sae_lens_attn.architectures` group (ours included). Installed metadata older than
    that group has none of ours there: then all built-in modules are imported instead."""
    ours_declared = any(is_builtin(ep) for ep in entry_points(group=ARCHITECTURE_ENTRY_POINT_GROUP))
    manager = PluginManager()
    manager.load_entry_points(include=lambda group, ep: group == ARCHITECTURE_ENTRY_POINT_GROUP
                              or (is_builtin(ep) and not ours_declared))
    return manager


def register_architectures_with_sae_lens(manager: PluginManager | None = None) -> list[str]:
    """Register every plugin architecture in SAELens's registry; returns the names.

    Idempotent. A name SAELens already holds for another class is left as it is and
    recorded in `manager.load_errors`, unless the plugin is a built-in: a built-in name
    always maps to the built-in classes. The inference class is registered before the
    training class because `TrainingSAEConfig.__post_init__` looks the inference config up.
    """
    from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY

    manager = manager or get_plugin_manager()
    registered = []
    for loaded in manager.entries("architecture"):
        name = loaded.entry.name
        try:
            classes = loaded.entry.load()
        except KeyboardInterrupt:
            raise
        except BaseException as err:
            manager._report(loaded.plugin, f"architecture {name!r} failed to load: {err!r}")
            continue
        if not isinstance(classes, ArchitectureClasses):
            manager._report(loaded.plugin, f"architecture {name!r} skipped: load() returned "
                            f"{_short(classes)}, expected an ArchitectureClasses")
            continue
        builtin = loaded.plugin in manager.builtin_plugins
        for registry, sae_class, config_class in (
            (SAE_CLASS_REGISTRY, classes.sae_class, classes.config_class),
            (SAE_TRAINING_CLASS_REGISTRY, classes.training_sae_class, classes.training_config_class),
        ):
            if sae_class is None:  # training only: it saves as another architecture
                continue
            held = registry.get(name)
            if held is None or (builtin and held[0] is not sae_class):
                # a plain dict assignment: sae_lens.registry's register_* refuse a known name
                registry[name] = (sae_class, config_class)
            elif held[0] is not sae_class:
                manager._report(loaded.plugin, f"architecture {name!r} skipped: SAELens "
                                f"already has {held[0].__name__} under that name")
        registered.append(name)
    return registered
