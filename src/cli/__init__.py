"""Thin command line over the package's modules.

Each subcommand lives in its own module of this package and exposes
``register(subparsers)`` (plus an optional ``ORDER`` int for ``--help``
ordering).  Modules are discovered, so a subcommand appears in ``--help``
exactly when its module is built.  Handlers raise ``InputError`` for bad input;
``main`` turns it into one line on stderr and exit status 2.
"""
import argparse
import importlib
import pkgutil
import sys

from shrinkteanet import __version__
from shrinkteanet.core.errors import InputError
from shrinkteanet.core.logutil import setup_logging


def build_parser():
    parser = argparse.ArgumentParser(
        prog="shrinkteanet",
        description="ShrinkTeaNet teacher-student face recognition on MXNet (InsightFace-compatible).",
    )
    parser.add_argument("--version", action="version", version=f"shrinkteanet {__version__}")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    parser.add_argument("--log-file", default=None, help="also write the log to this file")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    modules = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        modules.append(importlib.import_module(f"{__name__}.{info.name}"))
    for mod in sorted(modules, key=lambda m: (getattr(m, "ORDER", 50), m.__name__)):
        mod.register(sub)
    return parser


def add_json_arg(parser):
    """Every command that reports takes ``--json FILE`` (CONTRACTS.md)."""
    parser.add_argument("--json", metavar="FILE", default=None, help="also write the report fields as JSON")


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level, args.log_file)
    try:
        rc = args.func(args)
    except InputError as e:
        print(f"shrinkteanet: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `shrinkteanet ... | head` closed our stdout: not an error
        return 0
    except KeyboardInterrupt:
        print("shrinkteanet: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)
