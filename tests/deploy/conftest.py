"""Deploy-test fixtures; they live in `deploykit` (a unique module name, importable from the test files)."""

from __future__ import annotations

from deploykit import onnx_store, start_replica

__all__ = ["onnx_store", "start_replica"]
