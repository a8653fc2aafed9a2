"""The ``ssckit`` command line: a thin dispatcher over ``ssckit.commands.*``.

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int`` and imports its
heavy dependencies inside ``run``, so ``ssckit --help`` stays fast. User errors (:class:`ssckit.errors.SsckitError`)
print one line and exit 2; ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# The only registry of commands: name -> module.
COMMANDS: dict[str, str] = {
    "demo": "ssckit.commands.demo",
    "synth": "ssckit.commands.synth",
    "check-data": "ssckit.commands.check_data",
    "preprocess": "ssckit.commands.preprocess",
    "train": "ssckit.commands.train",
    "eval": "ssckit.commands.eval",
    "predict": "ssckit.commands.predict",
    "evaluate": "ssckit.commands.evaluate",
    "validate-submission": "ssckit.commands.validate_submission",
    "convert-checkpoint": "ssckit.commands.convert_checkpoint",
    "render": "ssckit.commands.render",
    "info": "ssckit.commands.info",
    "cache-teacher": "ssckit.commands.cache_teacher",
    "benchmark": "ssckit.commands.benchmark",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssckit", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def _version() -> str:
    from ssckit import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    from ssckit.errors import SsckitError

    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except SsckitError as e:
        if args.debug:
            raise
        print(f"ssckit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `ssckit info ... | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print(f"ssckit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
