"""Deploy-test fixtures; they live in `deploykit` (a unique module name, importable from the test files)."""

from __future__ import annotations

from deploykit import start_replica, tiny_store

__all__ = ["start_replica", "tiny_store"]
