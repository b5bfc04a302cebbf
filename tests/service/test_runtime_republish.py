"""A version folder replaced in place under the same number must not keep serving the old graph."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from storebuilder import build_model, run

from service.runtime import Runtime
from service.settings import Settings
from service.store.repository import ModelStore


def test_same_version_republished_serves_new_weights(tmp_path: Path) -> None:
    root = tmp_path / "store"
    build_model(root, "m", 1, seed=1)
    rt = Runtime(Settings(store=root))
    store = ModelStore.open(root, check=rt.prepare)
    z = {"z": np.zeros((1, 4), np.float32) + 0.5}
    before = run(rt.infer(store.get("m"), "decoder", z))["x_hat"]

    shutil.rmtree(root / "m" / "1")
    build_model(root, "m", 1, seed=2)  # same name and number, different weights
    store.reload()
    rt.retain(store)
    after = run(rt.infer(store.get("m"), "decoder", z))["x_hat"]
    assert not np.allclose(before, after), "runtime served the stale session of the replaced folder"
