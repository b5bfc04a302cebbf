"""`python -m training <command>`: fit one model, or build the shipped zoo.

    python -m training fit CONFIG.toml [--field value ...] [--model.field value ...]
    python -m training zoo [--store DIR] [--fresh]

Subcommands live in COMMANDS (name -> Command); another module adds one with `register(...)` before
`main()` runs, e.g. `export-triton` from training.triton, which is imported here when present.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from training.config import ConfigError

log = logging.getLogger("training")


@dataclass(frozen=True)
class Command:
    help: str
    add_args: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]  # parsed args -> exit code


COMMANDS: dict[str, Command] = {}
#: Modules that register extra subcommands when imported (absent ones are skipped).
PLUGINS = ("training.triton",)


def register(name: str, command: Command) -> None:
    COMMANDS[name] = command


# Under `python -m training` this file runs as `__main__`; alias it so a plugin's `training.__main__` is this
# module (and its COMMANDS), not a second copy that main() never sees.
sys.modules.setdefault("training.__main__", sys.modules[__name__])


# --- fit ------------------------------------------------------------------------------------------------


def _fit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, help="TOML file with [train] and [model] sections")
    p.add_argument("overrides", nargs=argparse.REMAINDER, metavar="--field value",
                   help="typed overrides: --epochs 5, --model.latent_dim 4")


def _fit(args: argparse.Namespace) -> int:
    from training import config, pipeline

    spec = config.resolve(args.config, args.overrides)
    result = pipeline.run(spec)
    if result.path is not None:
        log.info("published %s", result.path)
        print(result.path)  # noqa: T201 - the one machine-readable line of output: where it went
    return 0


# --- zoo ------------------------------------------------------------------------------------------------


def _zoo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", type=Path, default=Path("models_store"))
    p.add_argument("--fresh", action="store_true", help="remove the zoo models' old versions first")
    p.add_argument("--only", nargs="*", default=None, help="registry names to build (default: all)")
    p.add_argument("--report", type=Path, default=None, help="Markdown report (default: STORE/ZOO.md)")


def _zoo(args: argparse.Namespace) -> int:
    from training import zoo

    zoo.build_zoo(args.store, fresh=args.fresh, only=args.only, report=args.report)
    return 0


register("fit", Command("train, calibrate, export and publish one model", _fit_args, _fit))
register("zoo", Command("build the default model zoo on digits into the store", _zoo_args, _zoo))


def _load_plugins() -> None:
    for mod in PLUGINS:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _load_plugins()
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, cmd in COMMANDS.items():
        cmd.add_args(sub.add_parser(name, help=cmd.help, description=cmd.help))
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command].run(args)
    except ConfigError as exc:
        parser.exit(2, f"python -m training {args.command}: error: {exc}\n")
    return 1


if __name__ == "__main__":
    sys.exit(main())
