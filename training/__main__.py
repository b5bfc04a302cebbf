"""`python -m training <command>`: fit one model, or build the shipped zoo.

    python -m training fit CONFIG.toml [--field value ...] [--model.field value ...]
    python -m training zoo [--store DIR] [--fresh] [--runs DIR]
    python -m training quantize MODEL ... [--store DIR] [--precision int8 fp16] [--version N]

fit and zoo need torch and the rest of the `train` extra (`make train-env`). Without them, any command but
export-triton (which reads the store through service.store only), and --help, print one line that says how to
install them and exit 2, instead of an import traceback.

Subcommands live in COMMANDS (name -> Command); another module adds one with `register(...)` before
`main()` runs, e.g. `export-triton` from training.triton, which is imported here when present.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
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
#: Subcommands that run on the core install alone (no torch, no train extra).
CORE_ONLY = frozenset({"export-triton"})
#: Modules of the `train` extra that fit and zoo import (torch is imported; the rest only looked up).
TRAIN_MODULES = ("torch", "onnx", "onnxscript", "onnxruntime", "sklearn", "scipy", "tqdm")
#: Torch first and pinned: unpinned, pip picks the newest torch and its CUDA packages (gigabytes).
TORCH_PIN = "torch==2.13.0"


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
    p.add_argument("--runs", type=Path, default=Path("runs"),
                   help="where run folders (metrics.jsonl, checkpoints) go: RUNS/zoo/<model> (default: runs)")


def _zoo(args: argparse.Namespace) -> int:
    from training import zoo

    zoo.build_zoo(args.store, fresh=args.fresh, only=args.only, report=args.report, runs=args.runs)
    return 0


# --- quantize -------------------------------------------------------------------------------------------


def _quantize_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="+", help="published model names")
    p.add_argument("--store", type=Path, default=Path("models_store"))
    p.add_argument("--precision", nargs="+", default=["int8"], choices=["int8", "fp16"],
                   help="twins to make (default: int8)")
    p.add_argument("--version", type=int, default=None, help="the version to start from (default: latest)")


def _quantize(args: argparse.Namespace) -> int:
    from training import quantize

    for name in args.models:
        path = quantize.publish_twins(args.store, name, args.precision, args.version)
        print(path)  # noqa: T201 - where each new version went, as fit prints it
    return 0


register("fit", Command("train, calibrate, export and publish one model", _fit_args, _fit))
register("zoo", Command("build the default model zoo on digits into the store", _zoo_args, _zoo))
register("quantize", Command("publish a new version of a model with int8 (or fp16) twins of its graphs, "
                             "calibrated on its training data and checked against FP32", _quantize_args,
                             _quantize))


def _load_plugins() -> None:
    """Import each plugin and let it register its subcommands (its `register_cli(this module)`): a hook, not
    an import side effect, so a plugin imported before the CLI (by a test or a script) still registers."""
    for mod in PLUGINS:
        try:
            plugin = importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise
            continue
        hook = getattr(plugin, "register_cli", None)
        if hook is not None:
            hook(sys.modules[__name__])


def missing_train_modules() -> list[str]:
    """The `train` extra's modules that cannot be imported here (torch is imported, so a broken install
    counts as missing too)."""
    missing = []
    for mod in TRAIN_MODULES:
        try:
            if mod == "torch":
                importlib.import_module(mod)
            elif importlib.util.find_spec(mod) is None:
                missing.append(mod)
        except (ImportError, ValueError):  # ValueError: a module in sys.modules without a spec
            missing.append(mod)
    return missing


def check_train_extra(argv: Sequence[str]) -> None:
    """Exit 2 with one line saying how to install the train extra when a command needs it and it is missing;
    `--help` needs it too, so a newcomer in the serve-only venv learns the fix first."""
    command = next((a for a in argv if not a.startswith("-")), None)
    if command in CORE_ONLY:
        return
    missing = missing_train_modules()
    if missing:
        sys.stderr.write(
            f"python -m training: fit and zoo need the train extra (missing: {', '.join(missing)}); install "
            f"it with `make train-env`, or `pip install {TORCH_PIN}` then `pip install -e '.[train]'` "
            "(export-triton runs without it)\n")
        raise SystemExit(2)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    check_train_extra(sys.argv[1:] if argv is None else argv)
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
