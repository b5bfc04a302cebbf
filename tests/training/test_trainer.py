"""The one training loop: learning, early stopping, JSONL log, determinism, checkpoint/resume."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from training.config import ConfigError, TrainConfig
from training.data import Splits, split, synthetic
from training.models import REGISTRY, build
from training.models.base import GenerativeModel
from training.trainer import (
    CHECKPOINT_NAME,
    METRICS_NAME,
    Trainer,
    available_cpus,
    pick_threads,
    seed_everything,
)

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def splits() -> Splits:
    return split(synthetic(n=256, seed=1), seed=0)


def make(model: str = "ae", seed: int = 0) -> GenerativeModel:
    seed_everything(seed, torch.device("cpu"))
    return build(model, hidden=(32, 16), latent_dim=4)


def config(**kw: object) -> TrainConfig:
    values: dict[str, object] = dict(data="synthetic", epochs=4, steps_per_epoch=4, batch_size=32,
                                     device="cpu", progress=False, patience=10)
    values.update(kw)
    return TrainConfig(**values)  # type: ignore[arg-type]


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def read_log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / METRICS_NAME).read_text().splitlines()]


def test_loss_goes_down_and_log_has_one_line_per_epoch(splits: Splits, tmp_path: Path) -> None:
    model = make()
    result = Trainer(model, config(epochs=6, steps_per_epoch=None, lr=5e-3), tmp_path).fit(splits)
    lines = read_log(tmp_path)
    assert [r["epoch"] for r in lines] == [1, 2, 3, 4, 5, 6]
    assert {"epoch", "stage", "train", "val_loss", "time_s"} <= set(lines[0])
    assert lines[0]["stage"] == "fit" and "rec" in lines[0]["train"]
    assert lines[-1]["val_loss"] < 0.8 * lines[0]["val_loss"]
    assert lines[-1]["train"]["loss"] < lines[0]["train"]["loss"]
    assert result.epochs_run == 6 and result.val_loss == min(r["val_loss"] for r in lines)
    assert (tmp_path / CHECKPOINT_NAME).exists()


def test_early_stopping_stops_and_restores_best(splits: Splits, tmp_path: Path) -> None:
    model = make()
    # Nothing counts as an improvement after the first epoch, so patience 2 stops after epoch 3.
    trainer = Trainer(model, config(epochs=20, patience=2, min_delta=1e9), tmp_path)
    result = trainer.fit(splits)
    assert result.epochs_run == 3 and result.stages[0].stopped_early
    lines = read_log(tmp_path)
    assert len(lines) == 3
    # The model ends with the weights of epoch 1, the best one.
    final = trainer.validation_loss(trainer._to_device(splits.val.x))
    assert final == pytest.approx(lines[0]["val_loss"], rel=1e-6)


def test_same_seed_same_weights(splits: Splits, tmp_path: Path) -> None:
    a, b = make(seed=3), make(seed=3)
    Trainer(a, config(), tmp_path / "a").fit(splits)
    Trainer(b, config(), tmp_path / "b").fit(splits)
    assert_same(weights(a), weights(b))
    c = make(seed=4)
    Trainer(c, config(seed=4), tmp_path / "c").fit(splits)
    wa, wc = weights(a), weights(c)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)


class Crash(RuntimeError):
    pass


@pytest.mark.parametrize("model_name", [m for m in ("ae", "gan") if m in REGISTRY])
def test_resume_continues_identically(splits: Splits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      model_name: str) -> None:
    full = make(model_name)
    Trainer(full, config(model=model_name, epochs=3), tmp_path / "full").fit(splits)

    # Crash during the 3rd epoch overall (for a GAN that is inside its second stage's range when the first
    # stage is short), then resume from the checkpoint in a fresh process-like state.
    crashed = make(model_name)
    real = Trainer._run_epoch
    calls = {"n": 0}

    def flaky(self: Trainer, *args: object) -> dict[str, float]:
        calls["n"] += 1
        if calls["n"] == 3:
            raise Crash
        return real(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(Trainer, "_run_epoch", flaky)
    with pytest.raises(Crash):
        Trainer(crashed, config(model=model_name, epochs=3), tmp_path / "resumed").fit(splits)
    monkeypatch.setattr(Trainer, "_run_epoch", real)

    torch.manual_seed(12345)  # a different global RNG state: resume must restore its own
    resumed = make(model_name, seed=99)
    trainer = Trainer(resumed, config(model=model_name, epochs=3, resume=True), tmp_path / "resumed")
    result = trainer.fit(splits)
    assert_same(weights(full), weights(resumed))
    full_log = read_log(tmp_path / "full")
    resumed_log = read_log(tmp_path / "resumed")
    assert [(r["stage"], r["epoch"]) for r in resumed_log] == [(r["stage"], r["epoch"]) for r in full_log]
    assert result.epochs_run == sum(1 for _ in full_log)


def test_checkpoint_loads_with_weights_only(splits: Splits, tmp_path: Path) -> None:
    model = make()
    Trainer(model, config(epochs=1), tmp_path).fit(splits)
    ckpt = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert ckpt["train_config"]["model"] == "ae" and ckpt["model_config"]["latent_dim"] == 4
    assert set(ckpt["optimisers"]) == {p for s in model.stages() for p in s.phases}


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_family_trains_with_one_optimiser_per_phase(name: str, splits: Splits) -> None:
    model = make(name)
    trainer = Trainer(model, config(model=name, epochs=1, steps_per_epoch=2), None)
    phases = {p for s in model.stages() for p in s.phases}
    assert set(trainer.optimisers) == phases
    before = weights(model)
    trainer.fit(splits)
    assert any(not torch.equal(before[k], v) for k, v in weights(model).items())


def test_progress_bar_shows_loss_terms_on_a_tty_only(splits: Splits, monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import sys

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    for tty, expect in ((Tty(), True), (io.StringIO(), False)):
        monkeypatch.setattr(sys, "stderr", tty)
        Trainer(make(), config(epochs=1, steps_per_epoch=2, progress=True), None).fit(splits)
        monkeypatch.undo()
        assert ("rec=" in tty.getvalue()) is expect
    # not on rank != 0 either
    from training.trainer import DistContext

    trainer = Trainer(make(), config(epochs=1, steps_per_epoch=2, progress=True), None)
    trainer.ctx = DistContext(rank=1, world_size=1)
    monkeypatch.setattr(sys, "stderr", Tty())
    trainer.fit(splits)
    out = sys.stderr.getvalue()  # type: ignore[attr-defined]
    monkeypatch.undo()
    assert "rec=" not in out


def test_resume_refuses_a_checkpoint_of_another_model_or_an_unreadable_one(
    splits: Splits, tmp_path: Path
) -> None:
    """A changed model (latent_dim here) or a damaged file is a one-line usage error before any training,
    not a state_dict size-mismatch traceback."""
    run = tmp_path / "run"
    Trainer(make("ae"), config(epochs=1), run).fit(splits)
    other = build("ae", hidden=(32, 16), latent_dim=3)
    with pytest.raises(ConfigError, match=r"holds another model \(latent_dim: 4 there, 3 now\)"):
        Trainer(other, config(epochs=2, resume=True), run).fit(splits)
    with pytest.raises(ConfigError, match=r"model: 'ae' there, 'vae' now"):
        Trainer(build("vae", hidden=(32, 16), latent_dim=4), config(model="vae", epochs=2, resume=True),
                run).fit(splits)
    Trainer(make("ae"), config(epochs=2, resume=True), run).fit(splits)  # the same model resumes
    (run / CHECKPOINT_NAME).write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="unreadable"):
        Trainer(make("ae"), config(epochs=3, resume=True), run).fit(splits)


# --- the thread default -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "backbone", "env", "cpus", "expected"),
    [
        (3, "mlp", {"OMP_NUM_THREADS": "8"}, 16, 3),  # --threads wins over everything
        (None, "conv", {"OMP_NUM_THREADS": "2"}, 16, 2),  # then the standard OpenMP knob
        (None, "mlp", {"OMP_NUM_THREADS": "4,2"}, 16, 4),  # a nested OpenMP list: the outer level
        (None, "mlp", {}, 64, 1),  # an MLP: 1 whatever the machine
        (None, "mlp", {"OMP_NUM_THREADS": "0"}, 64, 1),  # a bad OpenMP value is ignored
        (None, "conv", {}, 8, 8),  # a conv net: every CPU the process may use
        (None, "conv", {"LOCAL_WORLD_SIZE": "2"}, 8, 4),  # shared by the ranks on this machine
        (None, "conv", {"LOCAL_WORLD_SIZE": "4"}, 3, 1),  # at least 1
        (None, "conv", {"OMP_NUM_THREADS": "", "LOCAL_WORLD_SIZE": "x"}, 2, 2),
    ],
)
def test_pick_threads(requested: int | None, backbone: str, env: dict[str, str], cpus: int,
                      expected: int) -> None:
    threads, why = pick_threads(requested, backbone, env, cpus)
    assert threads == expected and why


@pytest.mark.parametrize(("cpu_max", "cap"), [("200000 100000\n", 2), ("50000 100000", 1),
                                              ("max 100000", None), ("garbage", None), (None, None)])
def test_available_cpus_reads_affinity_and_the_cgroup_quota(tmp_path: Path, cpu_max: str | None,
                                                            cap: int | None) -> None:
    path = tmp_path / "cpu.max"
    if cpu_max is not None:
        path.write_text(cpu_max)
    affinity = len(os.sched_getaffinity(0))
    assert available_cpus(path) == (min(affinity, cap) if cap is not None else affinity)


def test_the_pipeline_applies_the_default_for_the_models_backbone(tmp_path: Path, tiny_spec,  # noqa: ANN001
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """threads left out: a conv net gets the process's CPUs (here pretended to be 3), an MLP 1."""
    from training import pipeline, trainer

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # tests/conftest.py sets it to 1
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(trainer, "available_cpus", lambda: 3)
    seen: list[int] = []
    monkeypatch.setattr(pipeline.torch, "set_num_threads", seen.append)
    for backbone in ("conv", "mlp"):
        spec = tiny_spec("ae", tmp_path / "store", tmp_path / backbone, threads=None, publish=False, epochs=1)
        spec.model.update(backbone=backbone, channels=(4, 8))
        pipeline.run(spec)
    assert TrainConfig().threads is None and seen == [3, 1]
