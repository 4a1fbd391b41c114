"""The ``pixelkit`` command (also ``python -m pixelkit``).

Subcommands import their modules only when run, so ``pixelkit --help`` is quick.

An expected failure -- a bad argument or input file, a bad checkpoint, a missing extra, a
full disk -- is answered with one line, ``pixelkit <command>: error: <file>: <reason>``, and
exit status 2. ``--debug`` (anywhere on the command line) or ``PIXELKIT_DEBUG=1`` shows the
traceback instead. Anything else (a bug) keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence

# Nothing reaches the network unless the user asks for it (DESIGN.md section 7).
os.environ.setdefault("WANDB_MODE", "offline")


def _info_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="tiny",
                        help="preset name (tiny, base, paper)")
    parser.add_argument("--depth", type=int, default=3, help="levels of the component tree")
    parser.add_argument("--materialize", action="store_true",
                        help="allocate real (random) weights instead of the meta device")


def _info_run(args: argparse.Namespace) -> int:
    from pixelkit.modeling.summary import describe_model

    # On the meta device only shapes exist: the paper model (~3.8 B parameters) is
    # described without allocating its weights or downloading anything.
    print(describe_model(args.preset, depth=args.depth,
                         device="cpu" if args.materialize else "meta"))
    return 0


# name -> (help, module or local add_arguments, run)
_COMMANDS: dict[str, tuple[str, str | tuple[Callable, Callable]]] = {
    "info": ("print a preset's component tree and parameter counts",
             (_info_arguments, _info_run)),
    "quickstart": ("shapes world -> four stages on CPU -> metrics.json, report.md, checkpoint",
                   "pixelkit.quickstart"),
    "study": ("one parameter over values and seeds: every run's config checked, trained, "
              "summarised (mean +- std)", "pixelkit.runs"),
    "synth": ("write the shapes world (images + annotations in the real formats)",
              "pixelkit.data.synth"),
    "eval": ("metrics of a checkpoint on an annotation file (refer, captions, densecap, trace)",
             "pixelkit.evaluate"),
    "export": ("a checkpoint as a Hugging Face Hub folder (safetensors, config.json, model "
               "card); --push REPO uploads it", "pixelkit.hub"),
    "bench": ("speed benchmarks, reported as ratios measured in one run", "pixelkit.bench"),
    "demo": ("the Gradio browser demo: per-word traces, region captions, refer, dense captions",
             "pixelkit.demo"),
}
_DATA_COMMANDS: dict[str, tuple[str, str]] = {
    "inspect": ("read an annotation file and report records, skipped and errors",
                "pixelkit.data.inspect"),
}


_LIGHTNING_COMMANDS = {
    "fit": "train a stage: pixelkit fit --config trace (or a YAML file) [--overrides]",
    "validate": "validate a checkpoint: pixelkit validate --config ... --ckpt_path PATH",
    "test": "test a checkpoint: pixelkit test --config ... --ckpt_path PATH",
}


def _resolve(target: str | tuple[Callable, Callable]) -> tuple[Callable, Callable]:
    """(add_arguments, run) of a subcommand, importing its module only now."""
    if isinstance(target, tuple):
        return target
    mod = importlib.import_module(target)
    return mod.add_arguments, mod.run


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    """The argument parser; only the chosen subcommand's module is imported."""
    parser = argparse.ArgumentParser(
        prog="pixelkit",
        description="PixelLLM (Pixel Aligned Language Models) experimentation kit.",
    )
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error instead of one line "
                             "(also: PIXELKIT_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in _LIGHTNING_COMMANDS.items():  # listed here, parsed by LightningCLI
        sub.add_parser(name, help=help_text, add_help=False)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (help_text, target) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            add, run = _resolve(target)
            add(p)
            p.set_defaults(_run=run)
    data = sub.add_parser("data", help="inspect annotation files", description="data tools")
    data_sub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    for name, (help_text, target) in _DATA_COMMANDS.items():
        p = data_sub.add_parser(name, help=help_text, description=help_text)
        if chosen == "data":
            add, run = _resolve(target)
            add(p)
            p.set_defaults(_run=run)
    return parser


def one_line(err: BaseException) -> str:
    """An error's message on one line (whitespace runs collapsed, at most 1,000 characters)."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 1000 else text[:997] + "..."


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pixelkit`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("PIXELKIT_DEBUG", "0") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    from pixelkit.optional import MissingDependency
    from pixelkit.runtime import retain_freed_memory

    retain_freed_memory()  # batched passes stop faulting their buffers in again (runtime.py)
    command = next((a for a in argv if not a.startswith("-")), "")
    # What a user can fix: bad values (ValueError: the config, data and checkpoint errors
    # are ValueErrors), files (OSError: missing, a folder, no permission, disk full) and
    # missing extras. Anything else is a bug and keeps its traceback.
    expected = (ValueError, OSError, MissingDependency)
    try:
        if argv and argv[0] in _LIGHTNING_COMMANDS:
            # fit / validate / test belong to LightningCLI (its --help, --config, overrides).
            from pixelkit.training import cli_main

            cli_main(argv)
            return 0
        parser = build_parser(argv)
        args = parser.parse_args(argv)
        run = getattr(args, "_run", None)
        if run is None:
            parser.print_help()
            return 0 if not argv else 2
        return int(run(args) or 0)
    except expected as err:
        if debug:
            raise
        print(f"pixelkit {command}: error: {one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
