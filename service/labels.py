"""A conditional model's labels: what a client may write for a class, and the input its graphs take.

One rule, used by every operation and adapter: a label is a class name (`"7"`, `"sandal"`) or its index
(`7`; a string of ASCII digits that is not a name is read as an index, so form fields work). A value that
names no class is a 422 that lists the classes there are. The graphs take a label as one-hot float32
(N, K); a soft label, such as the mix of two classes along an interpolation, is a valid input too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from service.errors import InvalidInput
from service.store.manifest import LabelSet
from service.store.repository import ModelVersion

LabelValue = int | str
#: Names listed in an error message before "...": a label set can be large, the full list is in `labels`.
SHOWN = 20


class UnknownLabel(InvalidInput):
    """A label that names no class of the model; `labels` (the problem's extension member) lists them all."""

    def __init__(self, detail: str, names: Sequence[str]) -> None:
        super().__init__(detail, labels=list(names))


def label_set(mv: ModelVersion, what: str = "label") -> LabelSet:
    """The model's label set; a 422 for a model without one (it is not conditional)."""
    ls = mv.manifest.labels
    if ls is None:
        raise InvalidInput(f"model {mv.name!r} is not conditional: it takes no {what}")
    return ls


def listing(ls: LabelSet) -> str:
    """`0, 1, ..., 9 (indices 0 to 9)`: the classes, for a message."""
    shown = ", ".join(repr(n) for n in ls.names[:SHOWN]) + (", ..." if len(ls.names) > SHOWN else "")
    return f"{shown} (or their indices 0 to {len(ls.names) - 1})"


def needed(mv: ModelVersion, graph: str) -> InvalidInput:
    """The error for a conditional graph called without a label."""
    ls = label_set(mv)
    return UnknownLabel(f"model {mv.name!r} is conditional: its {graph} needs a label; give `label`, one of "
                        f"{listing(ls)}", ls.names)


def _index(ls: LabelSet, value: object, model: str, what: str) -> int:
    k = len(ls.names)
    if isinstance(value, str):
        if value in ls.names:
            return ls.names.index(value)
        if value.isascii() and value.isdigit() and len(value) < 10 and int(value) < k:
            return int(value)
    elif isinstance(value, int) and not isinstance(value, bool) and 0 <= value < k:
        return value
    shown = repr(value)[:40] if isinstance(value, str | int) and not isinstance(value, bool) else "that value"
    raise UnknownLabel(f"{what} {shown} is not a label of model {model!r}; the labels are {listing(ls)}",
                       ls.names)


def indices(mv: ModelVersion, value: object, n: int | None = None, what: str = "label") -> np.ndarray:
    """Class indices (N,) int64 of one label or a list of labels. With `n`, one label is repeated n times and
    a list must have n of them."""
    ls = label_set(mv, what)
    items = value if isinstance(value, list) else [value]
    if not items:
        raise InvalidInput(f"{what} must be a label or a non-empty list of labels")
    if isinstance(value, list) and n is not None and len(items) != n:
        raise InvalidInput(f"{what} lists {len(items)} labels for {n} images: give one label, or one per "
                           "image")
    idx = np.array([_index(ls, v, mv.name, what) for v in items], dtype=np.int64)
    return np.repeat(idx, n) if n is not None and not isinstance(value, list) else idx


def one_hot(mv: ModelVersion, idx: np.ndarray) -> np.ndarray:
    """(N, K) float32 one-hot rows of class indices."""
    y = np.zeros((len(idx), len(label_set(mv).names)), dtype=np.float32)
    y[np.arange(len(idx)), idx] = 1.0
    return y


def mix(mv: ModelVersion, a: int, b: int, t: np.ndarray) -> np.ndarray:
    """(S, K) float32 soft labels from class a (t = 0) to class b (t = 1)."""
    y = np.zeros((len(t), len(label_set(mv).names)), dtype=np.float32)
    y[:, a] += (1.0 - t).astype(np.float32)
    y[:, b] += t.astype(np.float32)
    return y


def names(mv: ModelVersion, idx: np.ndarray) -> list[str]:
    """The class names of indices."""
    ls = label_set(mv)
    return [ls.names[int(i)] for i in idx]
