"""Register sae_lens_attn's architectures with SAELens the moment SAELens is imported.

`sae_lens_attn.pth` (installed into site-packages, also by editable installs) imports this
module at interpreter start. It only appends one `sys.meta_path` finder: no torch, no
sae_lens, nothing else is imported. When a program later imports `sae_lens`, the finder
lets the normal import run and then calls
`sae_lens_attn.plugins.register_architectures_with_sae_lens()`, so
`SAE.load_from_disk(...)` and `python -m sae_lens.llm_sae_training_runner --architecture
block_diagonal` work without the user importing sae_lens_attn.

Only architectures are registered then, and only the built-in plugins and the modules of
the entry-point group `sae_lens_attn.architectures` are imported: a third-party plugin
that fails (even with `sys.exit`) is reported as a warning and `import sae_lens` goes on.

`SAE_LENS_ATTN_NO_AUTOLOAD` switches this off when set to anything but "", "0", "false",
"no" or "off" (case-insensitive).
"""

from __future__ import annotations

import os
import sys

WATCHED_PACKAGE = "sae_lens"
SWITCH_VARIABLE = "SAE_LENS_ATTN_NO_AUTOLOAD"
VALUES_KEEPING_AUTOLOAD_ON = ("", "0", "false", "no", "off")


def autoload_disabled(environ: dict[str, str] | os._Environ = os.environ) -> bool:
    """Whether `SAE_LENS_ATTN_NO_AUTOLOAD` asks to skip the registration at import."""
    return environ.get(SWITCH_VARIABLE, "").strip().lower() not in VALUES_KEEPING_AUTOLOAD_ON


def _register_after_import() -> None:
    import warnings

    try:
        from sae_lens_attn.plugins import (
            architecture_plugin_manager,
            register_architectures_with_sae_lens,
        )

        register_architectures_with_sae_lens(architecture_plugin_manager())
    except KeyboardInterrupt:
        raise
    except BaseException as err:  # never break `import sae_lens` because of us
        warnings.warn(
            f"sae_lens_attn could not register its architectures with SAELens: {err!r}",
            stacklevel=2,
        )


class SAELensImportWatcher:
    """One-shot meta-path finder: on `import sae_lens`, run the real import, then register.

    Duck-typed rather than subclassing `importlib.abc.MetaPathFinder`: importing
    `importlib.abc` pulls in `importlib.resources` and `tempfile` (~7 ms per start).
    """

    def find_spec(self, fullname: str, path=None, target=None):  # -> ModuleSpec | None
        if fullname != WATCHED_PACKAGE:
            return None
        sys.meta_path.remove(self)
        from importlib.util import find_spec

        spec = find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run_module = spec.loader.exec_module

        def exec_then_register(module) -> None:
            run_module(module)
            _register_after_import()

        # Patch only this spec's own loader instance: resource readers etc. stay intact.
        spec.loader.exec_module = exec_then_register  # type: ignore[method-assign]
        return spec


def install() -> None:
    """Install the watcher unless sae_lens is already imported (then register now)."""
    if autoload_disabled():
        return
    if WATCHED_PACKAGE in sys.modules:
        _register_after_import()
    elif not any(isinstance(f, SAELensImportWatcher) for f in sys.meta_path):
        # First in line: the ordinary PathFinder would otherwise find sae_lens before us.
        sys.meta_path.insert(0, SAELensImportWatcher())


install()
