"""anomalib's DRAEM, trained and run as its users do, in its own venv (bench/anomaly_textures.py builds it).

    <anomalib venv>/bin/python bench/peers/anomalib_draem.py JOB.json

JOB: {"train_dir", "source_dir", "test_npz", "out_npz", "seconds", "seed", "size", "root"}. Trains
`anomalib.models.Draem(dtd_dir=source_dir)` with `anomalib.engine.Engine.fit` on an `anomalib.data.Folder` of
the training crops (batch 4, its optimiser and schedule, no validation) for `seconds` of wall time
(Lightning's max_time), then runs its torch model in eval mode on the test crops (images, as RGB) and writes
its anomaly maps and image scores, the steps it got, and anomalib's own AUROC and AUPRO of those maps (for
the bench to cross-check its metrics).

Two shims, both for torchvision 0.28.0 (the only build for torch 2.13.0 here is a CUDA one whose compiled
operators need libtorch_cuda, absent with the CPU torch): `torchvision._meta_registrations` is replaced by an
empty module before torchvision is imported (it registers meta kernels for operators such as
torchvision::nms, which did not load, and fails); and anomalib's Perlin generator reads anomaly-source images
with PIL instead of `torchvision.io.read_image` (same uint8 RGB tensor). DRAEM uses neither operator.
"""

from __future__ import annotations

import json
import sys
import time
import types
from pathlib import Path

sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402


def read_image(path: str, mode: object = None) -> torch.Tensor:
    """torchvision.io.read_image(path, ImageReadMode.RGB): (3, H, W) uint8."""
    a = np.asarray(Image.open(path).convert("RGB"))
    return torch.from_numpy(a.copy()).permute(2, 0, 1)


def main(job: dict) -> dict:  # type: ignore[type-arg]
    torch.set_num_threads(1)
    from anomalib.data.utils.generators import perlin

    perlin.io.read_image = read_image  # type: ignore[attr-defined]
    from anomalib.data import Folder
    from anomalib.engine import Engine
    from anomalib.metrics.aupro import _AUPRO
    from anomalib.metrics.auroc import _AUROC
    from anomalib.models import Draem
    from lightning.pytorch import seed_everything

    seed_everything(job["seed"], workers=True)
    train = Path(job["train_dir"])
    dm = Folder(name=train.name, root=train.parent, normal_dir=train.name, train_batch_size=4,
                eval_batch_size=4, num_workers=0, test_split_mode="none", val_split_mode="none",
                seed=job["seed"])
    size = (job["size"], job["size"])
    model = Draem(dtd_dir=job["source_dir"], pre_processor=Draem.configure_pre_processor(size),
                  evaluator=False, visualizer=False)
    seconds = int(job["seconds"])
    engine = Engine(accelerator="cpu", devices=1, logger=False, default_root_dir=job["root"], max_steps=-1,
                    max_epochs=100_000, max_time={"seconds": seconds}, limit_val_batches=0,
                    num_sanity_val_steps=0, enable_progress_bar=False)
    t0 = time.perf_counter()
    engine.fit(model=model, datamodule=dm)
    train_s = time.perf_counter() - t0
    steps = int(engine.trainer.global_step)

    test = np.load(job["test_npz"])
    x = torch.from_numpy(test["images"]).float()  # (N, 1, H, W) in [0, 1]
    net = model.model.eval()
    maps, scores = [], []
    t1 = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(x), 4):
            out = net(x[i:i + 4].expand(-1, 3, -1, -1))
            maps.append(out.anomaly_map.reshape(len(out.anomaly_map), *x.shape[2:]).numpy())
            scores.append(out.pred_score.reshape(-1).numpy())
    infer_s = time.perf_counter() - t1
    amap, score = np.concatenate(maps), np.concatenate(scores)

    theirs = {}  # anomalib's metrics of these maps, to check ours against
    for name, metric, preds, target in (
        ("image_auroc", _AUROC(), score, test["labels"]),
        ("pixel_auroc", _AUROC(), amap, test["masks"]),
        ("aupro", _AUPRO(fpr_limit=0.3), amap, test["masks"]),
    ):
        metric.update(torch.from_numpy(np.ascontiguousarray(preds)).float(),
                      torch.from_numpy(np.asarray(target)).int())
        theirs[name] = float(metric.compute())
    np.savez_compressed(job["out_npz"], maps=amap.astype(np.float32), scores=score.astype(np.float32))
    import anomalib

    return {"steps": steps, "epochs": int(engine.trainer.current_epoch), "train_s": round(train_s, 1),
            "infer_s": round(infer_s, 1), "batch_size": 4, "anomalib_metrics": theirs,
            "versions": {"anomalib": anomalib.__version__, "torch": torch.__version__}}


if __name__ == "__main__":
    job = json.loads(Path(sys.argv[1]).read_text())
    result = main(job)
    Path(job["result_json"]).write_text(json.dumps(result))
    print(json.dumps(result))
