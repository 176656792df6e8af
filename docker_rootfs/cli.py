"""The ``docker2vm`` command.

Each subcommand lives in its own module exposing ``register(subparsers)``,
which adds a parser whose ``func(args)`` returns the exit status. Errors
of :class:`docker_rootfs.errors.Docker2VMError` print one line and exit 1.
"""

import argparse
import importlib
import logging
import sys

from docker_rootfs import errors

# Modules providing subcommands, in help order. A module that is not there
# (yet) is skipped, so a partial install still has a working command.
COMMAND_MODULES = (
    "docker_rootfs.commands.inspect",
    "docker_rootfs.commands.flatten",
    "docker_rootfs.commands.convert",
    "docker_rootfs.commands.run",
    "docker_rootfs.commands.bundle",
    "docker_rootfs.guest.command",
)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="docker2vm",
        description="Turn Docker/OCI image archives into VM root filesystems.")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log what happens (to stderr)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                continue
            raise
        mod.register(sub)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.func(args) or 0
    except errors.Docker2VMError as exc:
        print(f"docker2vm: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("docker2vm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
