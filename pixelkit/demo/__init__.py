"""``pixelkit demo``: the Gradio browser demo (:mod:`pixelkit.demo.app`), shipped in the package.

The app is part of the installed package, so ``pixelkit demo`` works from a wheel as well
as from a checkout; ``demos/app.py`` in the repository is a launcher of the same code.
Gradio is the ``demo`` extra (``pip install 'pixelkit[demo]'``): this module parses the
arguments without it, and :func:`run` says how to install it when it is missing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

#: Where ``make quickstart`` writes its checkpoint (the default of ``--ckpt``).
DEFAULT_CKPT = Path("outputs/quickstart/checkpoints/pixelllm.ckpt")
#: Images larger than this are refused with a message (the model sees <= 1024 px anyway).
MAX_IMAGE_PIXELS = 4096 * 4096


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``pixelkit demo`` arguments."""
    parser.add_argument("--ckpt", type=Path, default=DEFAULT_CKPT,
                        help=f"pixelkit checkpoint (default {DEFAULT_CKPT}, written by "
                             "`make quickstart`)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--share", action="store_true",
                        help="also open a public gradio.live link (off by default)")
    parser.add_argument("--sam", default=None,
                        help="SAM for masks in Refer: a hub id (facebook/sam-vit-huge) or a "
                             "local SamModel directory")
    parser.add_argument("--device", default=None, help="cpu / cuda (default: cuda if available)")
    parser.add_argument("--max-megapixels", type=float, default=MAX_IMAGE_PIXELS / 1e6,
                        help="largest image accepted, in megapixels (default %(default).1f)")
    parser.add_argument("--examples", type=int, default=6,
                        help="shapes-world val images offered as examples (default 6)")


def run(args: argparse.Namespace) -> int:
    """Serve the app (imports Gradio only now)."""
    from pixelkit.demo import app

    return app.run(args)
