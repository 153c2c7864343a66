"""Thin command line over the package's modules.

Each subcommand lives in its own module of this package and exposes
``register(subparsers)`` (plus an optional ``ORDER`` int for ``--help``
ordering).  Modules are discovered, so a subcommand appears in ``--help``
exactly when its module is built.  A module is named after its command, so ``cli.train``,
``cli.config``, ``cli.demo``, ``cli.embed``, ``cli.export`` and ``cli.launch`` deliberately mirror the
modules they drive (``training.train``, ``training.config``, ``study.demo``, ...).  Handlers raise ``InputError`` for bad input;
``main`` turns it into one line on stderr and exit status 2.

A subcommand may declare its outputs and inputs: ``set_defaults(outputs=fn)``, ``fn(args) ->
(outputs, inputs)`` of ``core.outputs.Output``/``Input``.  ``main`` checks them before the
handler runs (``core.outputs.check_outputs``: writable, free space, name lengths, no output that
is an input; one line, exit 2), checks ``--json`` alone for a command that declares nothing, and
removes the folders the outputs would have created when the handler fails (issue 21).
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


#: ``--gpus`` help of the commands using every GPU / one GPU (``core.utils.choose_gpus``)
GPUS_HELP = "default: every visible GPU of a CUDA build, else the CPU; '' forces the CPU"
GPUS_HELP_ONE = "default: gpu(0) when a CUDA build sees one, else the CPU; '' forces the CPU"


def add_json_arg(parser):
    """Every command that reports takes ``--json FILE`` (CONTRACTS.md)."""
    parser.add_argument("--json", metavar="FILE", default=None, help="also write the report fields as JSON")


def json_output(args):
    """The ``--json FILE`` of a command as a ``core.outputs.Output`` (None when not given)."""
    from shrinkteanet.core.outputs import file_output

    return file_output("--json", getattr(args, "json", None))


def model_inputs(text, option="--model"):
    """``core.outputs.Input`` of a ``PREFIX,EPOCH`` checkpoint: the prefix, its symbol and parameters."""
    from shrinkteanet.core.outputs import Input
    from shrinkteanet.core.utils import parse_model_arg
    from shrinkteanet.model.checkpoint import checkpoint_paths

    prefix, epoch = parse_model_arg(text)
    label = f"{option} {text}"
    return [Input(label, prefix)] + [Input(label, p) for p in checkpoint_paths(prefix, epoch)]


def check_command_outputs(args):
    """``check_outputs`` of what ``args``' command declares (or of its ``--json``), and of
    ``--log-file``; returns the folders they would create."""
    from shrinkteanet.core.outputs import check_outputs, file_output

    declared = getattr(args, "outputs", None)
    outputs, inputs = declared(args) if declared else ([json_output(args)], [])
    return check_outputs(list(outputs) + [file_output("--log-file", args.log_file)], inputs)


def main(argv=None):
    from shrinkteanet.core.outputs import remove_created_folders

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        created = check_command_outputs(args)
    except InputError as e:
        print(f"shrinkteanet: error: {e}", file=sys.stderr)
        return 2
    setup_logging(args.log_level, args.log_file)
    rc = 1
    try:
        rc = int(args.func(args) or 0)
    except InputError as e:
        print(f"shrinkteanet: error: {e}", file=sys.stderr)
        rc = 2
    except BrokenPipeError:  # `shrinkteanet ... | head` closed our stdout: not an error
        rc = 0
    except KeyboardInterrupt:
        print("shrinkteanet: interrupted", file=sys.stderr)
        rc = 130
    finally:
        if rc:  # a failed command leaves no empty folder it made (its outputs' folders)
            remove_created_folders(created)
    return rc
