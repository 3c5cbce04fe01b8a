"""The ``stainldm`` console script: argument parsing, logging and the error policy.

Every stage lives in its own module in ``pipelines/``; this file only wires subcommands to them.
Errors: a :class:`~stainldm.errors.StainLDMError` prints ``error: <message>`` on one line and
exits with its code (2 bad input/config, 1 failure while running); ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

# No network at run time: albumentations checks PyPI at import, the hub would be asked for weights.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import stainldm
from stainldm.errors import StainLDMError, one_line, with_flags

log = logging.getLogger("stainldm")


def _one_malloc_arena() -> None:
    """glibc gives every thread that allocates a malloc arena of its own, and memory freed there stays
    in it: with stain's reader and writer threads, peak memory grew with the slide (1.13× from a 5000²
    to a 20000² slide, against 1.05× with one arena, which also staining measured no slower). Before
    torch is imported and starts its threads; a MALLOC_ARENA_MAX the user set wins."""
    if "MALLOC_ARENA_MAX" in os.environ or not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").mallopt(-8, 1)  # M_ARENA_MAX
    except (OSError, AttributeError):  # not glibc
        pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stainldm",
        description="Virtual H&E staining of unstained tissue-microarray slides with a conditional "
                    "latent diffusion model.",
        epilog="Run 'stainldm COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"stainldm {stainldm.__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    common.add_argument("--quiet", "-q", action="store_true", help="no progress bars, warnings only")
    common.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    from pipelines import demo, evaluate, info, make_sample, merge_stores, prepare, stain, train

    for module in (make_sample, prepare, merge_stores, train, stain, evaluate, demo, info):
        module.add_parser(sub, common)
    return parser


def flags_of(parser: argparse.ArgumentParser, command: str | None) -> dict[str, str]:
    """Parameter (argparse dest) -> flag for ``command``'s options: ``{"batch_size": "--batch-size"}``."""
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    chosen = sub.choices.get(command) if sub is not None and command else None
    flags = {}
    for action in (chosen or parser)._actions:
        longs = [s for s in action.option_strings if s.startswith("--")]
        if longs:
            flags[action.dest] = longs[0]
    return flags


def main(argv: Sequence[str] | None = None) -> int:
    _one_malloc_arena()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    # Recipes that print a recorded error themselves (a failed slide or pair) show its parameters as flags too.
    args.flags = flags_of(parser, args.command)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s" if args.verbose else "%(message)s",
    )
    try:
        return int(args.run(args) or 0)
    except StainLDMError as exc:
        if args.debug:
            raise
        print(f"error: {with_flags(one_line(exc), args.flags)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(f"error: unexpected {type(exc).__name__}: {one_line(exc)} (rerun with --debug for the "
              "traceback and report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
