"""`sae-lens-attn serve SITE`: serve an atlas, or circuit-tracer's graph viewer on a
`graph` output, on 127.0.0.1 with Python's `http.server`.

The atlas opens from `file://` as it is; this is for those who prefer a URL (or a browser
that restricts local files). A `sae-lens-attn graph` folder (`graph-metadata.json`) is
served with circuit-tracer's own frontend and request handler (the optional extra
`sae-lens-attn[graph]`): its page at `/index.html`, the folder's graphs under `/data/` and
`/graph_data/`. Only the loopback interface is bound; Ctrl+C stops it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sae_lens_attn.commands._values import non_negative_int
from sae_lens_attn.errors import InvalidInputError

HOST = "127.0.0.1"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "serve",
        help="serve an atlas, or a graph in circuit-tracer's viewer, on http://127.0.0.1",
        description="Serve the static site written by `sae-lens-attn atlas` on 127.0.0.1, or "
        "circuit-tracer's attribution-graph viewer on a `sae-lens-attn graph` folder (needs "
        "`pip install sae-lens-attn[graph]`; the viewer loads d3 and its other libraries "
        "from their CDNs).",
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


def _graph_viewer_handler(site: Path):
    """circuit-tracer's request handler: its frontend's files, and `site` as the data."""
    import functools

    try:
        from circuit_tracer.frontend.local_server import DEFAULT_FRONTEND_DIR, CircuitGraphHandler
    except ImportError:
        raise InvalidInputError(
            f"{site}: serving a graph uses circuit-tracer's viewer, which is not installed; "
            "`pip install 'sae-lens-attn[graph]'`, or open graph.html from the folder"
        ) from None
    return functools.partial(
        CircuitGraphHandler, frontend_dir=DEFAULT_FRONTEND_DIR, data_dir=str(site)
    )
