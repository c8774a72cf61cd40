"""`sae-lens-attn serve SITE`: serve an atlas, or circuit-tracer's graph viewer on a
`graph` output, on 127.0.0.1 with Python's `http.server`.

The atlas opens from `file://` as it is; this is for those who prefer a URL (or a browser
that restricts local files). A `sae-lens-attn graph` folder (`graph-metadata.json`) is
served with circuit-tracer's own frontend and request handler (installed apart, with
`pip install --no-deps circuit-tracer`): its page at `/index.html`, the folder's graphs
under `/data/` and `/graph_data/`. Its pages load d3, d3-jetpack, dagre and pako from CDNs; we rewrite those
`<script>` tags to the copies vendored in `sae_lens_attn/dashboard/vendor/`, served under
`/_vendor/`, so the viewer works with no network. Only the loopback interface is bound;
Ctrl+C stops it.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from sae_lens_attn.commands._values import non_negative_int
from sae_lens_attn.errors import InvalidInputError

HOST = "127.0.0.1"
VENDOR_URL = "/_vendor/"
_LIB = "https://transformer-circuits.pub/2025/attribution-graphs/static_js/lib/"
# circuit-tracer's CDN scripts -> our vendored files (dashboard/vendor/), none: dropped
VIEWER_SCRIPTS = {
    _LIB + "hotserver-client-ws.js": (),  # its authors' live-reload client
    _LIB + "d3.js": ("d3.v7.9.0.min.js",),
    # d3-jetpack 2 builds `nestBy` on d3-collection's `nest`, which d3 v7 no longer has
    _LIB + "jetpack_2024-07-20.js": (
        "d3-collection-1.0.7.min.js",
        "d3-jetpack-2.3.0.js",
        "d3-jetpack-compat.js",  # ours: what the viewer uses of a newer d3-jetpack
    ),
    _LIB + "npy_v0.js": (),  # reads .npy files; graph folders hold JSON
    "https://unpkg.com/dagre@0.8.5/dist/dagre.min.js": ("dagre-0.8.5.min.js",),
    "https://unpkg.com/pako@2.1.0/dist/pako.min.js": ("pako-2.1.0.min.js",),
}
VENDORED = {name for names in VIEWER_SCRIPTS.values() for name in names}
_CDN_SCRIPT = re.compile(r"""<script src=(['"])(https?://[^'"]+)\1></script>""")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "serve",
        help="serve an atlas, or a graph in circuit-tracer's viewer, on http://127.0.0.1",
        description="Serve the static site written by `sae-lens-attn atlas` on 127.0.0.1, or "
        "circuit-tracer's attribution-graph viewer on a `sae-lens-attn graph` folder (needs "
        "`pip install --no-deps 'circuit-tracer>=0.5,<0.6'`; served offline, with vendored "
        "copies of the libraries it loads from CDNs).",
    )
    parser.add_argument(
        "site",
        type=Path,
        help="the atlas folder (`sae-lens-attn atlas --out`) or a graph folder "
        "(`sae-lens-attn graph --out`)",
    )
    parser.add_argument(
        "--port", type=non_negative_int, default=8000, help="TCP port (0: any free port)"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    import functools
    import http.server

    from sae_lens_attn.commands.graph import METADATA_FILE
    from sae_lens_attn.dashboard.atlas.site import MARKER, read_marker

    if args.port > 65535:
        raise InvalidInputError(f"--port {args.port}: expected 0..65535")
    page = "index.html"
    if args.site.is_dir() and (args.site / METADATA_FILE).is_file():
        handler = _graph_viewer_handler(args.site)
        page = "index.html?slug=graph"
    else:
        marker = read_marker(args.site) if args.site.is_dir() else None
        if marker is None or not marker.get("complete"):
            raise InvalidInputError(
                f"{args.site}: not a finished atlas (no complete {MARKER}) nor a graph folder "
                f"(no {METADATA_FILE}); write one with `sae-lens-attn atlas --sae SAE --out "
                "SITE` or `sae-lens-attn graph ... --out SITE`"
            )
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(args.site))
    try:
        server = http.server.ThreadingHTTPServer((HOST, args.port), handler)
    except OSError as error:
        raise InvalidInputError(
            f"--port {args.port}: cannot listen on {HOST} ({error.strerror}); "
            "choose another port, or 0 for any free one"
        ) from None
    host, port = server.server_address[:2]
    print(f"serving {args.site} at http://{host}:{port}/{page} (Ctrl+C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def offline_viewer_page(html: str) -> str:
    """circuit-tracer's page with its CDN `<script>` tags pointing at `/_vendor/` (or
    removed; `VIEWER_SCRIPTS`); a script not listed there is left as it is."""

    def local(match: re.Match) -> str:
        url = match.group(2)
        if url not in VIEWER_SCRIPTS:
            return match.group(0)
        return "".join(
            f"<script src='{VENDOR_URL}{name}'></script>" for name in VIEWER_SCRIPTS[url]
        )

    return _CDN_SCRIPT.sub(local, html)


def _graph_viewer_handler(site: Path):
    """circuit-tracer's request handler: its frontend's files, with its pages rewritten by
    `offline_viewer_page` and our vendored libraries under `/_vendor/`, and `site` as the
    data."""
    import functools
    import urllib.parse

    from sae_lens_attn.dashboard.page import VENDOR_DIR

    try:
        from circuit_tracer.frontend.local_server import DEFAULT_FRONTEND_DIR, CircuitGraphHandler
    except ImportError:
        raise InvalidInputError(
            f"{site}: serving a graph uses circuit-tracer's viewer, which is not installed; "
            "`pip install --no-deps 'circuit-tracer>=0.5,<0.6'` (docs/graphs.md), or open graph.html "
            "from the folder"
        ) from None

    class OfflineViewerHandler(CircuitGraphHandler):
        def do_GET(self) -> None:
            path = urllib.parse.urlsplit(self.path).path
            if path.startswith(VENDOR_URL):
                name = path[len(VENDOR_URL) :]
                if name not in VENDORED:
                    self.send_error(404)
                    return
                self._send((VENDOR_DIR / name).read_bytes(), "text/javascript")
                return
            page = Path(self.translate_path("/index.html" if path == "/" else path))
            if page.suffix == ".html" and page.is_file():
                html = offline_viewer_page(page.read_text(encoding="utf-8"))
                self._send(html.encode("utf-8"), "text/html; charset=utf-8")
                return
            super().do_GET()

        def _send(self, body: bytes, content_type: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return functools.partial(
        OfflineViewerHandler, frontend_dir=DEFAULT_FRONTEND_DIR, data_dir=str(site)
    )
