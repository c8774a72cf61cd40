"""The package's import graph, read with `ast` (nothing is imported), and its picture.

As an MkDocs hook it replaces `<!-- architecture-diagram -->` in a page with an SVG of the
rooms (sub-packages) in their layers and an arrow for every room that imports another, drawn
from the code at build time so it cannot drift. `tests/test_architecture.py` uses the same
walker to fail on import cycles and on imports that point up the layers.
"""

from __future__ import annotations

import ast
import html
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "sae_lens_attn"

# The rooms' order, written down once (the test, the picture and its table read it): rooms
# from the top layer down; a room imports only rooms of lower layers (and rooms of its own
# layer, as long as no two files import each other). Modules not named here are the shared
# helpers (errors, runtime, _atomic, _safe_output, _upstream, _lazy, dead) that every layer may
# use, and the entry points (cli, __main__, _autoload).
LAYER_ROWS: tuple[tuple[str, ...], ...] = (
    ("cli",),
    ("commands",),
    ("demo",),
    ("dashboard",),
    ("detectors",),
    ("attribution",),
    ("training", "toy"),
    ("architectures", "sources"),
    ("plugins", "models"),
)

SHARED = "errors, runtime, _atomic, _safe_output, _upstream, _lazy, dead"
_MARKER = "<!-- architecture-diagram -->"


def module_files(package: Path = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every module of `package` (packages by `__init__`)."""
    modules = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that module `name` imports anywhere in its file (top level,
    under `TYPE_CHECKING` and inside functions alike)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join([*package, node.module] if node.module else package)
            else:
                base = node.module or ""
            # `from pkg import submodule` imports the submodule, `from pkg import name` pkg
            candidates = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        found.update(candidate for candidate in candidates if candidate in modules)
    found.discard(name)
    return found


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package's modules it imports."""
    modules = module_files(package)
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def layer_numbers(rows: tuple[tuple[str, ...], ...]) -> dict[str, int]:
    """Room -> layer number (higher is further up) of rows listed from the top down."""
    return {name: len(rows) - depth for depth, row in enumerate(rows) for name in row}


LAYERS: dict[str, int] = {**layer_numbers(LAYER_ROWS), "__main__": len(LAYER_ROWS)}


def room(module: str) -> str:
    """`sae_lens_attn.detectors.taxonomy` -> `detectors`; the package itself -> ``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def room_edges(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(room, room it imports) for the layered rooms, sorted."""
    edges = {
        (room(module), room(target))
        for module, targets in graph.items()
        for target in targets
        if room(module) in LAYERS and room(target) in LAYERS and room(module) != room(target)
    }
    edges.discard(("__main__", "cli"))
    return sorted(edges)


def upward_imports(
    graph: dict[str, set[str]], rows: tuple[tuple[str, ...], ...] = LAYER_ROWS
) -> list[str]:
    """`module -> target` for every import of a room in a higher layer than its own."""
    layers = LAYERS if rows is LAYER_ROWS else layer_numbers(rows)
    return sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        for target in targets
        if room(module) in layers
        and room(target) in layers
        and layers[room(target)] > layers[room(module)]
    )


def diagram_svg(edges: list[tuple[str, str]]) -> str:
    """An SVG of the layer rows with one arrow per room edge (`room_edges`)."""
    box_w, box_h, gap_x, gap_y, width = 150, 34, 40, 34, 760
    centres: dict[str, tuple[float, float]] = {}
    parts = []
    for depth, row in enumerate(LAYER_ROWS):
        y = 20 + depth * (box_h + gap_y)
        row_w = len(row) * box_w + (len(row) - 1) * gap_x
        for i, name in enumerate(row):
            x = (width - row_w) / 2 + i * (box_w + gap_x)
            centres[name] = (x + box_w / 2, y + box_h / 2)
            parts.append(
                f'<rect x="{x:.0f}" y="{y}" width="{box_w}" height="{box_h}" rx="6" '
                'fill="#eef3fb" stroke="#3b5b92"/>'
                f'<text x="{x + box_w / 2:.0f}" y="{y + 22}" text-anchor="middle" '
                f'font-family="monospace" font-size="14">{html.escape(name)}/</text>'
            )
    bottom = 20 + len(LAYER_ROWS) * (box_h + gap_y)
    parts.append(
        f'<text x="{width / 2:.0f}" y="{bottom}" text-anchor="middle" font-family="sans-serif" '
        f'font-size="12">every layer may use the shared modules: {html.escape(SHARED)}</text>'
    )
    arrows = []
    for source, target in edges:
        (x1, y1), (x2, y2) = centres[source], centres[target]
        same_row = abs(y1 - y2) < 1
        if same_row:
            x1, x2 = (
                (x1 + box_w / 2, x2 - box_w / 2) if x2 > x1 else (x1 - box_w / 2, x2 + box_w / 2)
            )
        else:
            # leave and enter each box towards the other end, so arrows fan out
            spread = max(-0.45 * box_w, min(0.45 * box_w, (x2 - x1) * 0.4))
            x1, x2, y1, y2 = x1 + spread, x2 - spread, y1 + box_h / 2, y2 - box_h / 2
        bend = (x1 - x2) * 0.15 + (12 if same_row else 0)
        mid_x, mid_y = (x1 + x2) / 2 + bend, (y1 + y2) / 2
        arrows.append(
            f'<path d="M{x1:.0f},{y1:.0f} Q{mid_x:.0f},{mid_y:.0f} {x2:.0f},{y2:.0f}" '
            'fill="none" stroke="#7a8aa8" stroke-width="1.2" marker-end="url(#arrow)">'
            f"<title>{html.escape(source)} imports {html.escape(target)}</title></path>"
        )
    height = bottom + 14
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="100%" role="img" aria-label="sae_lens_attn packages and their imports">'
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
        'fill="#7a8aa8"/></marker></defs>' + "".join(arrows) + "".join(parts) + "</svg>"
    )


def edges_table(edges: list[tuple[str, str]]) -> str:
    """A Markdown table: each room and the rooms it imports."""
    lines = ["| room | imports |", "|---|---|"]
    for row in LAYER_ROWS:
        for name in row:
            targets = ", ".join(f"`{t}`" for s, t in edges if s == name) or "(only shared modules)"
            lines.append(f"| `{name}/` | {targets} |")
    return "\n".join(lines)


def on_page_markdown(markdown: str, **kwargs: object) -> str:
    if _MARKER not in markdown:
        return markdown
    edges = room_edges(import_graph())
    return markdown.replace(_MARKER, f"{diagram_svg(edges)}\n\n{edges_table(edges)}")
