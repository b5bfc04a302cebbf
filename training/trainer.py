"""One training loop for every family, on CPU, CUDA or under torchrun.

The loop only speaks the interface of `training.models.base`: it iterates `model.stages()`, and for every
batch takes one optimiser step per phase (an Adam per phase over `model.phase_parameters(phase)`).
Early stopping watches `model.validation_loss` and restores the best weights. Each epoch writes one
JSON line per stage to `metrics.jsonl` and a checkpoint that `resume` continues from exactly: the
shuffling generator is seeded per (stage, epoch) and the global RNG state is saved, so a resumed CPU run
ends with the same weights as an uninterrupted one.

Distributed (WORLD_SIZE > 1, e.g. under torchrun): the same loop, with the model wrapped in
DistributedDataParallel, each rank taking a seeded, identical-across-ranks shard of every epoch's
permutation, and only rank 0 showing progress and writing files.

Conditional families (`model.conditional`): every batch carries its int64 labels, and each phase is called
as `model(x, phase=name, y=labels)`; validation passes them too. Unconditional families never see labels.

Random crops (`CropSplits`, for fully convolutional models on images of any size): the batches of an epoch
come from a `training.data.crops.CropStream` (a DataLoader whose workers decode the images) seeded by the
same (stage, epoch) key, and validation runs on fixed crop-sized windows. Everything else is the same loop.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from training.config import ConfigError, TrainConfig, to_dict
from training.data import Splits
from training.data.crops import CropSplits, CropStream, FileImages
from training.models.base import GenerativeModel, Stage

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
#: Keep the dataset on the GPU when it takes less than this share of free memory.
GPU_DATA_FRACTION = 0.25
#: Input elements per validation batch, at most: 256 8x8 digits or 28x28 MNIST images alike, but only 85 RGB
#: 64x64 crops (a batch of photos' activations is what bounds the memory of crop training).
VAL_ELEMENTS = 2**20


# --- distributed context ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DistContext:
    """Rank and world size; world_size 1 means no process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()


def init_distributed(device: torch.device) -> DistContext:
    """Join the process group torchrun describes in the environment (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def shutdown_distributed(ctx: DistContext) -> None:
    if ctx.enabled and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def pick_device(choice: str, ctx: DistContext | None = None) -> torch.device:
    """'auto' is CUDA when available; under torchrun each rank takes its local GPU."""
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but CUDA is not available")
    index = int(os.environ.get("LOCAL_RANK", "0")) if ctx is None else ctx.local_rank
    return torch.device("cuda", index)


def available_cpus(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """CPUs this process may use: its affinity mask (taskset, cpusets), capped by a cgroup v2 CPU quota
    (`docker run --cpus 2` on a 64-core host: torch's default would start 64 threads on 2 CPUs' worth)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            n = min(n, int(quota) // int(period))
    except (OSError, ValueError):  # no cgroup v2 quota visible
        pass
    return max(1, n)


def pick_threads(requested: int | None, backbone: str, env: Mapping[str, str] = os.environ,
                 cpus: int | None = None) -> tuple[int, str]:
    """The torch CPU thread count for a run and why: `requested` when set, else OMP_NUM_THREADS when set
    (torchrun sets it to 1 for several local ranks), else 1 for an MLP, else this process's share of the
    CPUs it may use (available_cpus() / LOCAL_WORLD_SIZE).

    An MLP on these inputs (8x8 to 28x28, batches of 64-128) does too little per op for a second thread to
    pay for its synchronisation, and an OpenMP pool larger than the free cores stalls at every op: the README
    command (ae-digits, 30 epochs) trained in 1.2 s with 1 or 2 threads on 2 idle cores, but 15.5 s with
    torch's default 2 against 1.9 s with 1 on 2 busy ones. A conv AE on 28x28 MNIST trained 1.7x faster on
    2 threads than on 1 on 2 idle cores (2.3x slower beside one busy process): on a shared machine pass
    --threads 1.
    """
    if requested is not None:
        return requested, "--threads"
    omp = env.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if omp.isdigit() and int(omp) >= 1:
        return int(omp), "OMP_NUM_THREADS"
    if backbone == "mlp":
        return 1, "MLP backbone"
    local = env.get("LOCAL_WORLD_SIZE", "1")
    procs = int(local) if local.isdigit() and int(local) >= 1 else 1
    cpus = available_cpus() if cpus is None else cpus
    return max(1, cpus // procs), f"{cpus} CPUs available / {procs} local process(es)"


def seed_everything(seed: int, device: torch.device) -> None:
    """Seed torch and numpy; on CPU also force deterministic kernels, so a seed fixes the result."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)


# --- results ------------------------------------------------------------------------------------------


@dataclass
class StageResult:
    name: str
    epochs_run: int
    best_val_loss: float | None
    stopped_early: bool


@dataclass
class FitResult:
    stages: list[StageResult] = field(default_factory=list)
    train_seconds: float = 0.0
    device: str = "cpu"
    world_size: int = 1

    @property
    def epochs_run(self) -> int:
        return sum(s.epochs_run for s in self.stages)

    @property
    def val_loss(self) -> float | None:
        vals = [s.best_val_loss for s in self.stages if s.best_val_loss is not None]
        return vals[-1] if vals else None


# --- the trainer ----------------------------------------------------------------------------------------


class Trainer:
    """Fits one `GenerativeModel` on `Splits` according to a `TrainConfig`."""

    def __init__(self, model: GenerativeModel, cfg: TrainConfig, run_dir: Path | None = None,
                 device: torch.device | None = None, ctx: DistContext | None = None) -> None:
        self.cfg = cfg
        self.ctx = ctx or DistContext()
        self.device = device or pick_device(cfg.device, self.ctx)
        self.model = model.to(self.device)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.net: nn.Module = self.model
        if self.ctx.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            # Phases touch subsets of the parameters, so DDP must tolerate unused ones.
            self.net = DistributedDataParallel(self.model, device_ids=ids, find_unused_parameters=True)
        lr = cfg.lr if cfg.lr is not None else model.cfg.lr
        phases = dict.fromkeys(p for s in model.stages() for p in s.phases)  # ordered, unique
        self.optimisers = {
            p: torch.optim.Adam(list(model.phase_parameters(p)), lr=lr, weight_decay=model.cfg.weight_decay)
            for p in phases
        }
        self.amp = cfg.amp and self.device.type == "cuda"

    # -- data --------------------------------------------------------------------------------------
    def _to_device(self, x: np.ndarray) -> Tensor:
        t = torch.from_numpy(np.ascontiguousarray(x))
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            if t.numel() * t.element_size() < GPU_DATA_FRACTION * free:
                return t.to(self.device)
            return t.pin_memory()
        return t

    def _stream(self, splits: CropSplits) -> CropStream:
        cfg = self.cfg
        streamed = isinstance(splits.train, FileImages)  # decoding photos runs beside training
        workers = cfg.workers if cfg.workers is not None else (2 if streamed else 0)
        return CropStream(splits, cfg.batch_size, cfg.seed, cfg.crops_per_image, cfg.epoch_crops, workers,
                          self.ctx.rank, self.ctx.world_size, cfg.scale_jitter)

    def _labels(self, splits: Splits | CropSplits) -> tuple[Tensor | None, Tensor | None]:
        """The train and validation labels for a conditional family (None, None for the others); a
        conditional family needs every image labelled in [0, num_classes)."""
        if not self.model.conditional:
            return None, None
        if isinstance(splits, CropSplits):
            raise ConfigError("a conditional model trains on whole labelled images, not random crops")
        k = self.model.num_classes
        for part in (splits.train, splits.val):
            if len(part.y) and (part.y.min() < 0 or part.y.max() >= k):
                raise ConfigError(f"{part.name}: a conditional model needs every image labelled 0..{k - 1}, "
                                  f"got labels {int(part.y.min())}..{int(part.y.max())}")
        return self._to_device(splits.train.y), self._to_device(splits.val.y)

    def _batches(self, data: Tensor | CropStream, stage_idx: int, epoch: int, labels: Tensor | None = None
                 ) -> Iterator[tuple[Tensor, Tensor | None]]:
        """(images, their labels or None) per batch. Seeded shuffling, identical on every rank; each rank
        takes every world_size-th sample of the permutation padded to a multiple of world_size (what
        DistributedSampler does). A CropStream is seeded by the same key and shards the same way."""
        key = self.cfg.seed * 1_000_003 + stage_idx * 10_007 + epoch
        if isinstance(data, CropStream):
            for x in data.epoch(key, self.cfg.steps_per_epoch):
                yield x.to(self.device, non_blocking=True), None
            return
        g = torch.Generator().manual_seed(key)
        perm = torch.randperm(len(data), generator=g)
        if self.ctx.enabled:
            per_rank = math.ceil(len(perm) / self.ctx.world_size)
            pad = per_rank * self.ctx.world_size - len(perm)
            perm = torch.cat([perm, perm[:pad]])[self.ctx.rank::self.ctx.world_size]
        bs = self.cfg.batch_size
        n_batches = math.ceil(len(perm) / bs)
        if len(perm) % bs == 1 and n_batches > 1:
            n_batches -= 1  # a batch of one breaks batch statistics (BatchNorm, sparse-KL, MMD)
        if self.cfg.steps_per_epoch is not None:
            n_batches = min(n_batches, self.cfg.steps_per_epoch)
        for i in range(n_batches):
            idx = perm[i * bs:(i + 1) * bs]
            if data.device != self.device:
                idx = idx.to(data.device)
            y = labels[idx].to(self.device, non_blocking=True) if labels is not None else None
            yield data[idx].to(self.device, non_blocking=True), y

    # -- one step ----------------------------------------------------------------------------------
    def _step(self, x: Tensor, phase: str, y: Tensor | None = None) -> dict[str, float]:
        self.model.zero_grad(set_to_none=True)  # a phase must not step on another phase's gradients
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            out = self.net(x, phase=phase, **_labels(y))
        loss = out.loss.float()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss in phase {phase!r}: {loss.item()}")
        loss.backward()
        self.optimisers[phase].step()
        terms = {f"{phase}/{k}" if len(self.optimisers) > 1 else k: float(v) for k, v in out.terms.items()}
        terms.setdefault(f"{phase}/loss" if len(self.optimisers) > 1 else "loss", float(loss.detach()))
        return terms

    def _run_epoch(self, train: Tensor | CropStream, stage_idx: int, stage: Stage, epoch: int,
                   labels: Tensor | None = None) -> dict[str, float]:
        from tqdm import tqdm

        self.net.train()
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}  # a phase may repeat per batch (k discriminator steps)
        n = 0
        show = self.cfg.progress and self.ctx.is_main and sys.stderr.isatty()
        bar = tqdm(self._batches(train, stage_idx, epoch, labels), disable=not show, leave=False,
                   desc=f"{stage.name} {epoch + 1}", unit="batch")
        for x, y in bar:
            for phase in stage.phases:
                for k, v in self._step(x, phase, y).items():
                    sums[k] = sums.get(k, 0.0) + v
                    counts[k] = counts.get(k, 0) + 1
            n += 1
            if show:
                bar.set_postfix({k: f"{v / counts[k]:.4g}" for k, v in list(sums.items())[:4]})
        bar.close()
        return {k: v / counts[k] for k, v in sums.items()}  # mean per step

    @torch.no_grad()
    def validation_loss(self, val: Tensor, labels: Tensor | None = None) -> float:
        """Mean over the validation set (with its labels, for a conditional family), batched; averaged across
        ranks so all stop together."""
        self.model.eval()
        total, count = 0.0, 0
        per_item = math.prod(val.shape[1:]) if val.ndim > 1 else 1
        bs = max(1, min(max(self.cfg.batch_size, 256), VAL_ELEMENTS // per_item))
        for i in range(0, len(val), bs):
            x = val[i:i + bs].to(self.device)
            y = labels[i:i + bs].to(self.device) if labels is not None else None
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                loss = self.model.validation_loss(x, **_labels(y))
            total += float(loss) * len(x)
            count += len(x)
        value = total / max(count, 1)
        if self.ctx.enabled:
            t = torch.tensor([value], dtype=torch.float64, device=self.device)
            torch.distributed.all_reduce(t)
            value = float(t) / self.ctx.world_size
        return value

    # -- checkpoint --------------------------------------------------------------------------------
    def _checkpoint_path(self) -> Path | None:
        return self.run_dir / CHECKPOINT_NAME if self.run_dir is not None else None

    def _save_checkpoint(self, state: dict[str, Any]) -> None:
        path = self._checkpoint_path()
        if path is None or not self.ctx.is_main:
            return
        ckpt = {
            "model": self.model.state_dict(),
            "optimisers": {p: o.state_dict() for p, o in self.optimisers.items()},
            "train_config": to_dict(self.cfg),
            "model_config": to_dict(self.model.cfg),
            "model_name": self.cfg.model,
            "rng": torch.get_rng_state(),
            **state,
        }
        tmp = path.with_suffix(".tmp")
        torch.save(ckpt, tmp)
        os.replace(tmp, path)  # a crash mid-save keeps the previous checkpoint

    def _load_checkpoint(self) -> dict[str, Any] | None:
        path = self._checkpoint_path()
        if not self.cfg.resume or path is None or not path.exists():
            return None
        try:
            ckpt = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as exc:  # truncated, not a torch file, or pickled objects weights_only refuses
            first = str(exc).splitlines()[0][:160] if str(exc) else ""
            raise ConfigError(f"cannot resume: {path} is unreadable ({type(exc).__name__}: {first}); "
                              f"remove it or use another --run_dir") from exc
        mine = {"model": self.cfg.model, **to_dict(self.model.cfg)}
        theirs = {"model": ckpt.get("model_name"), **ckpt.get("model_config", {})}
        changed = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
        if changed:
            diffs = ", ".join(f"{k}: {theirs.get(k)!r} there, {mine.get(k)!r} now" for k in changed)
            raise ConfigError(f"cannot resume: {path} holds another model ({diffs}); remove it, use another "
                              f"--run_dir, or resume without changing the model")
        self.model.load_state_dict(ckpt["model"])
        for p, o in self.optimisers.items():
            o.load_state_dict(ckpt["optimisers"][p])
        torch.set_rng_state(ckpt["rng"].cpu())
        log.info("resumed from %s (stage %d, epoch %d)", path, ckpt["stage_index"], ckpt["epoch"])
        return ckpt

    def _log(self, record: dict[str, Any]) -> None:
        if self.run_dir is None or not self.ctx.is_main:
            return
        with open(self.run_dir / METRICS_NAME, "a") as f:
            f.write(json.dumps(record) + "\n")

    # -- the loop ----------------------------------------------------------------------------------
    def fit(self, splits: Splits | CropSplits) -> FitResult:
        """Run every stage; returns what happened. The model ends with the best weights of each stage."""
        if self.run_dir is not None and self.ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if not self.cfg.resume:
                (self.run_dir / METRICS_NAME).unlink(missing_ok=True)
        train = self._stream(splits) if isinstance(splits, CropSplits) else self._to_device(splits.train.x)
        val = self._to_device(splits.val.x)
        train_y, val_y = self._labels(splits)
        resumed = self._load_checkpoint()
        result = FitResult(device=str(self.device), world_size=self.ctx.world_size)
        if resumed is not None:
            result.stages = [StageResult(**s) for s in resumed["finished_stages"]]
        t0 = time.perf_counter() - (resumed["train_seconds"] if resumed else 0.0)
        for si, stage in enumerate(self.model.stages()):
            if resumed is not None and si < resumed["stage_index"]:
                continue
            start = 0
            best_loss, best_state, bad = math.inf, None, 0
            if resumed is not None and si == resumed["stage_index"]:
                start = resumed["epoch"] + 1
                best_loss, bad = resumed["best_loss"], resumed["bad_epochs"]
                best_state = resumed.get("best_state")
                resumed = None
            epochs = stage.epochs or self.cfg.epochs
            stopped, ran = False, start
            for epoch in range(start, epochs):
                te = time.perf_counter()
                terms = self._run_epoch(train, si, stage, epoch, train_y)
                val_loss = self.validation_loss(val, val_y) if stage.early_stopping and len(val) else None
                ran = epoch + 1
                if val_loss is not None:
                    if val_loss < best_loss - self.cfg.min_delta:
                        best_loss, bad = val_loss, 0
                        best_state = copy.deepcopy(self.model.state_dict())
                    else:
                        bad += 1
                    stopped = bad >= self.cfg.patience
                self._log({"epoch": epoch + 1, "stage": stage.name, "train": terms, "val_loss": val_loss,
                           "time_s": round(time.perf_counter() - te, 4)})
                done = stopped or epoch + 1 == epochs
                if done and best_state is not None:
                    self.model.load_state_dict(best_state)  # a finished stage's checkpoint holds its best
                self._save_checkpoint({
                    "stage_index": si if not done else si + 1, "epoch": epoch if not done else -1,
                    "best_loss": best_loss if not done else math.inf, "bad_epochs": bad if not done else 0,
                    "finished_stages": [vars(s) for s in result.stages] + (
                        [vars(StageResult(stage.name, ran, _finite(best_loss), stopped))] if done else []),
                    "train_seconds": time.perf_counter() - t0,
                    **({"best_state": best_state} if best_state is not None and not done else {}),
                })
                if stopped:
                    log.info("stage %s: early stop after epoch %d (best val %.5g)", stage.name, ran,
                             best_loss)
                    break
            if best_state is not None:
                self.model.load_state_dict(best_state)  # also when the stage ended without a final epoch
            result.stages.append(StageResult(stage.name, ran, _finite(best_loss), stopped))
        result.train_seconds = time.perf_counter() - t0
        self.model.eval()
        return result


def _labels(y: Tensor | None) -> dict[str, Tensor]:
    """The keyword a conditional family's forward and validation_loss take; none for the others."""
    return {} if y is None else {"y": y}


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None
