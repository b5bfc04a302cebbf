"""Which precision serves a request: the model's FP32 graphs, or their reduced-precision twins.

One rule, used by /v1, V2 over HTTP and V2 over gRPC alike:

    asked       a request's `precision` (a /v1 query parameter, a V2 request parameter). It must be one the
                model (for V2: the graph) has, else a 422 whose `precisions` member lists those it has.
    default     the `precision` setting (LATENTSERVE_PRECISION), for requests that ask for none. A model
                without that twin serves FP32: the setting is a preference over a store of mixed models,
                not a requirement of each.

"fp32" is always there: a graph's own file, the one the export parity gate vouches for. Twins (int8, fp16)
are ONNX files, so the TorchScript backend serves FP32 only. A version's choice covers every graph a
request runs (an encoder and its decoder at the same precision), so batches never mix precisions.
"""

from __future__ import annotations

from collections.abc import Iterable

from service.errors import InvalidInput
from service.store.manifest import PRECISIONS, Precision
from service.store.repository import ModelVersion

FP32: Precision = "fp32"


class UnknownPrecision(InvalidInput):
    """A precision the model does not have; `precisions` (the problem's extension member) lists those it
    has."""

    def __init__(self, detail: str, available: list[Precision]) -> None:
        super().__init__(detail, precisions=list(available))


def available(mv: ModelVersion, graphs: Iterable[str] | None = None, backend: str = "onnx"
              ) -> list[Precision]:
    """The precisions `mv` serves for `graphs` (default: every graph): "fp32", and each twin all of them
    have."""
    return [FP32] if backend != "onnx" else mv.manifest.precisions(graphs)


def choose(mv: ModelVersion, asked: object, default: Precision = FP32, graphs: Iterable[str] | None = None,
           backend: str = "onnx") -> Precision:
    """The precision a request runs at (see the module docstring): `asked` when the model has it (422 when it
    does not), else `default` when the model has that, else FP32."""
    if asked is None and default == FP32:
        return FP32
    graphs = None if graphs is None else list(graphs)
    have = available(mv, graphs, backend)
    if asked is None:
        return default if default in have else FP32
    if asked not in have:
        what = f"model {mv.name!r}" if graphs is None else f"graph {', '.join(graphs)} of {mv.name!r}"
        why = "" if asked in PRECISIONS else f" (precisions are {', '.join(PRECISIONS)})"
        twins = " (twins are served by the onnx backend only)" if backend != "onnx" and asked in PRECISIONS \
            else ""
        shown = repr(asked)[:40]
        raise UnknownPrecision(f"{what} has no precision {shown}{why}{twins}; it has {', '.join(have)}", have)
    return asked  # type: ignore[return-value]  # one of `have`, so a Precision
