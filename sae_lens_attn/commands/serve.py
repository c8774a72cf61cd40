"""`sae-lens-attn serve SITE`: serve an atlas on 127.0.0.1 with Python's `http.server`.

The atlas opens from `file://` as it is; this is for those who prefer a URL (or a browser
that restricts local files). Only the loopback interface is bound; Ctrl+C stops it.
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
        help="serve an atlas folder on http://127.0.0.1 (it also opens from file://)",
        description="Serve the static site written by `sae-lens-attn atlas` on 127.0.0.1.",
    )
    parser.add_argument("site", type=Path, help="the atlas folder (`sae-lens-attn atlas --out`)")
    parser.add_argument(
        "--port", type=non_negative_int, default=8000, help="TCP port (0: any free port)"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    import functools
    import http.server

    from sae_lens_attn.dashboard.atlas.site import MARKER, read_marker

    marker = read_marker(args.site) if args.site.is_dir() else None
    if marker is None or not marker.get("complete"):
        raise InvalidInputError(
            f"{args.site}: not a finished atlas (no complete {MARKER}); "
            "write one with `sae-lens-attn atlas --sae SAE --out SITE`"
        )
    if args.port > 65535:
        raise InvalidInputError(f"--port {args.port}: expected 0..65535")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(args.site))
    try:
        server = http.server.ThreadingHTTPServer((HOST, args.port), handler)
    except OSError as error:
        raise InvalidInputError(
            f"--port {args.port}: cannot listen on {HOST} ({error.strerror}); "
            "choose another port, or 0 for any free one"
        ) from None
    host, port = server.server_address[:2]
    print(f"serving {args.site} at http://{host}:{port}/index.html (Ctrl+C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
