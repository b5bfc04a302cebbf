"""`python -m training`: config files, typed overrides with clear errors, subcommands, `fit` end to end."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from service.store.layout import version_numbers
from service.store.manifest import Manifest
from training import __main__ as cli
from training.config import ConfigError, TrainConfig, model_config, parse_overrides, resolve

pytestmark = pytest.mark.usefixtures("torch_single_thread")
REPO = Path(__file__).resolve().parents[2]

TOML = """
[train]
model = "ae"
data = "synthetic"
epochs = 2
steps_per_epoch = 3
batch_size = 32
device = "cpu"
threads = 1
nll_k = 4
[model]
latent_dim = 3
hidden = [32, 16]
"""


@pytest.fixture()
def cfg_file(tmp_path: Path) -> Path:
    p = tmp_path / "run.toml"
    p.write_text(TOML)
    return p


def test_file_values_then_typed_overrides(cfg_file: Path) -> None:
    spec = resolve(cfg_file, ["--epochs", "5", "--amp=false", "--split", "0.7,0.2,0.1",
                              "--normal_classes", "1,2", "--lr", "3e-4", "--train.seed", "7",
                              "--model.latent_dim", "4", "--patience", "2"])
    t = spec.train
    assert (t.model, t.data, t.epochs, t.amp, t.seed, t.patience) == ("ae", "synthetic", 5, False, 7, 2)
    assert t.split == (0.7, 0.2, 0.1) and t.normal_classes == (1, 2) and t.lr == 3e-4
    assert isinstance(t.epochs, int) and isinstance(t.lr, float)
    m = model_config(t.model, spec.model)
    assert m.latent_dim == 4 and m.hidden == (32, 16)
    assert resolve(cfg_file, ["--lr", "none"]).train.lr is None


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--epochs", "five"], "train.epochs: 'five' is not an int"),
        (["--device", "gpu"], "train.device: 'gpu' is not one of 'auto', 'cpu', 'cuda'"),
        (["--amp", "maybe"], "train.amp: 'maybe' is not a bool"),
        (["--split", "0.5,0.5"], "train.split: expected 3 values, got 2"),
        (["--epochz", "3"], "unknown train field 'epochz'"),
        (["--epochs"], "flag --epochs needs a value"),
        (["epochs", "3"], "expected --field value"),
        (["--data.path", "x"], "unknown section"),
        (["--epochs", "0"], "must be >= 1"),
        (["--lr", "-1"], "lr must be a finite number > 0, got -1.0"),
        (["--lr", "nan"], "lr must be a finite number > 0"),
        (["--threads", "0"], "threads must be >= 1"),
        (["--steps_per_epoch", "0"], "steps_per_epoch must be >= 1"),
        (["--min_delta", "-0.1"], "min_delta must be >= 0"),
    ],
)
def test_bad_flags_fail_clearly(cfg_file: Path, flags: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve(cfg_file, flags)


def test_bad_model_fields_and_files(tmp_path: Path, cfg_file: Path) -> None:
    with pytest.raises(ConfigError, match="unknown model field 'latent'"):
        model_config("ae", {"latent": "3"})
    with pytest.raises(ConfigError, match="model.latent_dim: 'x' is not an int"):
        model_config("ae", {"latent_dim": "x"})
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        model_config("nope", {})
    bad = tmp_path / "bad.toml"
    bad.write_text("[trian]\nepochs = 1\n")
    with pytest.raises(ConfigError, match="unknown section"):
        resolve(bad)
    bad.write_text("[train]\nepochs = 'ten'\n")
    with pytest.raises(ConfigError, match="train.epochs"):
        resolve(bad)
    with pytest.raises(ConfigError, match="missing.toml"):
        resolve(tmp_path / "missing.toml")


@pytest.mark.parametrize(("model", "fields", "message"), [
    ("ae", {"latent_dim": "0"}, "model: latent_dim must be a finite number >= 1, got 0"),
    ("ae", {"hidden": "0,5"}, "model: hidden widths must be >= 1"),
    ("ae", {"channels": "32,-1"}, "model: channels widths must be >= 1"),
    ("ae", {"lr": "0"}, "model: lr must be a finite number > 0"),
    ("ae", {"weight_decay": "-1"}, "model: weight_decay must be a finite number >= 0"),
    ("vae", {"sigma": "0"}, "model: sigma must be a finite number > 0"),
    ("beta-vae", {"beta": "-1"}, "model: beta must be a finite number >= 0"),
    ("ae-sparse-l1", {"l1": "-0.1"}, "model: l1 must be"),
    ("ae-sparse-kl", {"rho": "1.5"}, "model: rho must be in \\(0, 1\\)"),
    ("ae-denoising", {"corruption": "masking", "noise_level": "2"}, "fraction of pixels"),
    ("ae-contractive", {"contractive": "-1"}, "model: contractive must be"),
    ("aae", {"disc_hidden": "0"}, "model: disc_hidden widths"),
    ("wae", {"prior_var": "0"}, "model: prior_var must be a finite number > 0"),
    ("gan", {"disc_steps": "0"}, "model: disc_steps must be a finite number >= 1"),
])
def test_model_fields_out_of_range_fail_before_training(
    model: str, fields: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        model_config(model, fields, input_shape=(1, 8, 8))


def test_every_family_default_config_is_valid() -> None:
    from training.models import REGISTRY

    for name in REGISTRY:
        model_config(name, {}, input_shape=(1, 8, 8))


def test_an_unwritable_store_fails_before_training(cfg_file: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        cli.main(["fit", str(cfg_file), "--store", str(blocker / "store"), "--run_dir", str(run_dir)])
    assert exc.value.code == 2
    assert "cannot publish there" in capsys.readouterr().err
    assert not run_dir.exists()  # nothing was trained


def test_data_errors_are_usage_errors_not_tracebacks(cfg_file: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    for flags, message in ((["--data", str(tmp_path / "nope")], "no such file or folder"),
                           (["--normal_classes", "42"], "normal classes (42,) not all in the data")):
        with pytest.raises(SystemExit) as exc:
            cli.main(["fit", str(cfg_file), "--publish", "false", *flags])
        assert exc.value.code == 2 and message in capsys.readouterr().err


def test_parse_overrides_splits_sections() -> None:
    train, model = parse_overrides(["--epochs", "3", "--model.latent-dim=2", "--train.batch_size", "8"])
    assert train == {"epochs": "3", "batch_size": "8"} and model == {"latent_dim": "2"}


def test_defaults_are_valid() -> None:
    assert TrainConfig().device == "auto"


def test_fit_end_to_end_into_a_tmp_store(cfg_file: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "store"
    rc = cli.main(["fit", str(cfg_file), "--store", str(store), "--run_dir", str(tmp_path / "run"),
                   "--name", "cli-ae", "--model.latent_dim", "2"])
    assert rc == 0
    assert version_numbers(store / "cli-ae") == [1]
    assert capsys.readouterr().out.strip() == str(store / "cli-ae" / "1")
    m = Manifest.model_validate_json((store / "cli-ae" / "1" / "manifest.json").read_text())
    assert m.latent.dim == 2 and m.training["config"]["epochs"] == 2
    assert m.training["model_config"]["hidden"] == [32, 16]


def test_cli_bad_flag_exits_2_with_message(cfg_file: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "training", "fit", str(cfg_file), "--epochs", "many"],
                          capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[2])
    assert proc.returncode == 2
    assert "train.epochs: 'many' is not an int" in proc.stderr


def test_subcommands_are_registered_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[argparse.Namespace] = []

    def add(p: argparse.ArgumentParser) -> None:
        p.add_argument("--out", type=Path, required=True)

    def run(args: argparse.Namespace) -> int:
        seen.append(args)
        return 0

    monkeypatch.setitem(cli.COMMANDS, "dummy", cli.Command("a test command", add, run))
    assert cli.main(["dummy", "--out", "x"]) == 0
    assert seen[0].out == Path("x")
    assert {"fit", "zoo"} <= set(cli.COMMANDS)


def test_zoo_builds_names_reports_and_fresh_restarts_at_version_1(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from training import zoo

    monkeypatch.setattr(zoo, "BASE_TRAIN", {**zoo.BASE_TRAIN, "epochs": 1, "steps_per_epoch": 2})
    monkeypatch.setattr(zoo, "BASE_MODEL", {"hidden": (16,)})
    monkeypatch.chdir(tmp_path)  # run dirs go under ./runs
    store = tmp_path / "zoo"
    assert cli.main(["zoo", "--store", str(store), "--only", "ae"]) == 0
    assert cli.main(["zoo", "--store", str(store), "--only", "ae"]) == 0
    assert version_numbers(store / "ae-digits") == [1, 2]
    assert cli.main(["zoo", "--store", str(store), "--only", "ae", "--fresh"]) == 0
    assert version_numbers(store / "ae-digits") == [1]
    m = Manifest.model_validate_json((store / "ae-digits" / "1" / "manifest.json").read_text())
    assert m.data.dataset == "digits" and m.training["split"]["fractions"] == [0.8, 0.1, 0.1]
    report = (store / "ZOO.md").read_text()
    assert "| ae-digits | ae | plain | 1 |" in report and "total build time" in report
    with pytest.raises(ConfigError, match="unknown zoo models"):
        zoo.build_zoo(store, only=["nope"])


# --- runs: where run folders go -----------------------------------------------------------------------


def test_runs_sets_where_run_folders_go(cfg_file: Path, tmp_path: Path) -> None:
    runs = tmp_path / "elsewhere"
    assert cli.main(["fit", str(cfg_file), "--publish", "false", "--runs", str(runs), "--name", "r1"]) == 0
    assert (runs / "r1" / "metrics.jsonl").is_file()
    assert resolve(cfg_file).train.runs == "runs"  # the default: ./runs, as before


def test_an_unwritable_runs_folder_fails_before_training(cfg_file: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit) as exc:
        cli.main(["fit", str(cfg_file), "--publish", "false", "--runs", str(blocker / "runs")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "run folder" in err and "cannot write there" in err and "--runs DIR" in err


def test_zoo_runs_flag_and_unwritable_runs_fail_before_removing_anything(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from training import zoo

    assert zoo.zoo_spec("vae", tmp_path / "s", tmp_path / "r").train.run_dir == str(tmp_path / "r/zoo/vae")
    store = tmp_path / "store"
    (store / "ae-digits" / "1").mkdir(parents=True)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setattr(zoo, "load", lambda *_: pytest.fail("loaded data before checking the folders"))
    with pytest.raises(SystemExit) as exc:
        cli.main(["zoo", "--store", str(store), "--only", "ae", "--fresh", "--runs", str(blocker)])
    assert exc.value.code == 2 and "run folder" in capsys.readouterr().err
    assert (store / "ae-digits" / "1").is_dir()  # --fresh removed nothing


# --- without torch: one line that says how to install it --------------------------------------------


@pytest.fixture(scope="module")
def no_torch_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An environment whose `import torch` fails as it does where torch is not installed: a `torch` package
    first on the path that raises ModuleNotFoundError (the real one stays installed for the other tests)."""
    fake = tmp_path_factory.mktemp("no-torch")
    (fake / "torch").mkdir()
    (fake / "torch" / "__init__.py").write_text(
        'raise ModuleNotFoundError("No module named \'torch\'", name="torch")\n')
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake), str(REPO)])}


@pytest.mark.parametrize("argv", [["--help"], [], ["fit", "configs/ae-digits.toml"], ["fit", "--help"],
                                  ["zoo", "--store", "/nonexistent/store"], ["nonsense"]],
                         ids=lambda a: " ".join(a) or "no-args")
def test_without_torch_prints_one_line_and_exits_2(no_torch_env: dict[str, str], argv: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "training", *argv], capture_output=True, text=True,
                          timeout=120, cwd=REPO, env=no_torch_env)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr and not proc.stdout, proc.stderr
    assert "(missing: torch)" in lines[0]  # the rest of the train extra is installed here
    assert "make train-env" in lines[0] and f"pip install {cli.TORCH_PIN}" in lines[0]
    assert "pip install -e '.[train]'" in lines[0]


def test_export_triton_still_runs_without_torch(no_torch_env: dict[str, str], tmp_path: Path) -> None:
    """The README's `export-triton ... # no torch needed` stays true."""
    proc = subprocess.run([sys.executable, "-m", "training", "export-triton", "--store", "models_store",
                           "--model", "ae-digits", "--out", str(tmp_path / "triton")],
                          capture_output=True, text=True, timeout=120, cwd=REPO, env=no_torch_env)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "triton" / "ae-digits.encoder" / "config.pbtxt").is_file()


def test_install_hint_follows_the_pins_and_make_train_env_installs_torch_first() -> None:
    pin = re.search(r'"(torch==[\d.]+)"', (REPO / "pyproject.toml").read_text())
    assert pin and cli.TORCH_PIN == pin.group(1)
    make = (REPO / "Makefile").read_text()
    target = re.search(r"^train-env:\s*(\S+)", make, re.M)
    assert target, "make train-env exists"
    recipe = re.search(rf"^{re.escape(target.group(1))}:.*\n((?:\t.*\n)+)", make, re.M)
    assert recipe, f"no recipe for {target.group(1)}"
    steps = recipe.group(1).splitlines()
    torch_at = next(i for i, s in enumerate(steps) if re.search(rf"pip install\b.*\s{cli.TORCH_PIN}\b", s))
    extra_at = next(i for i, s in enumerate(steps) if ".[train]" in s)
    assert torch_at < extra_at, "torch goes in first, pinned, so the train extra does not pick another"
    run = re.search(r"^run:(.*)$", make, re.M)
    assert run and ".serve" in run.group(1) and ".train" not in run.group(1) and ".dev" not in run.group(1)
    assert re.search(r"^models:.*\.train", make, re.M), "make models builds the training environment"
