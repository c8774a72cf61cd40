"""PEP 562 lazy exports for package `__init__` files: a name is imported on first use.

`import sae_lens_attn` runs at every interpreter start (the `.pth` hook), so package
`__init__`s must not import torch; they name their exports here instead.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str,
    namespace: dict[str, Any],
    exports: Mapping[str, str],
    moved: Mapping[str, str] | None = None,
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`(__getattr__, __dir__)` for `package` whose `namespace` is its `globals()`.

    `exports`: public name -> module defining it. `moved`: deprecated name -> the module
    to import it from now; using one warns (`DeprecationWarning`, naming that module) and
    works.
    """
    moved = dict(moved or {})

    def __getattr__(name: str) -> Any:
        module_name = exports.get(name)
        if module_name is None and name in moved:
            module_name = moved[name]
            warnings.warn(
                f"{package}.{name} moved: import it from {module_name}; the old name will "
                "be removed in a later release",
                DeprecationWarning,
                stacklevel=2,
            )
        if module_name is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module_name), name)
        if name in exports:
            namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
