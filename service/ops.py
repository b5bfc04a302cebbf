"""The operations, as plain async functions on numpy arrays and a runner (anything with `Runtime.infer`).

No HTTP here: handlers parse, call one of these, and shape the answer. Images are float32 (N, C, H, W) in the
model's value range, already validated by `service.images`; latents are float32 (N, latent_dim). A capability
the model lacks raises `CapabilityMissing` naming it.
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from service import labels, spatial
from service.errors import CapabilityMissing, InvalidInput
from service.store import scores
from service.store.manifest import GaussianPrior, GMMPrior, LatentSpec, NormalPrior
from service.store.repository import ModelVersion

Method = Literal["linear", "slerp"]
NoiseKind = Literal["gaussian", "salt-and-pepper", "masking"]
MIN_STEPS, MAX_STEPS = 2, 256


class Runner(Protocol):
    async def infer(
        self, mv: ModelVersion, graph: str, feeds: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]: ...


# --- results ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Encoded:
    mean: np.ndarray  # (N, D)
    logvar: np.ndarray | None  # (N, D) for VAEs


@dataclass(frozen=True)
class Sampled:
    images: np.ndarray  # (N, C, H, W)
    latents: np.ndarray  # (N, D)
    seed: int
    labels: np.ndarray | None = None  # (N,) class indices, for a conditional model


@dataclass(frozen=True)
class Restyled:
    images: np.ndarray  # (M, C, H, W)
    style: np.ndarray  # (N, D) the codes of the inputs
    source: np.ndarray  # (M,) which input each image restyles
    labels: np.ndarray  # (M,) the class each image is drawn as


@dataclass(frozen=True)
class Interpolated:
    images: np.ndarray  # (steps, C, H, W)
    latents: np.ndarray  # (steps, D)
    t: np.ndarray  # (steps,) from 0 to 1


@dataclass(frozen=True)
class Reconstructed:
    images: np.ndarray  # (N, C, H, W)
    mse: np.ndarray  # (N,)


@dataclass(frozen=True)
class Denoised:
    images: np.ndarray  # (N, C, H, W) clean estimates
    noisy: np.ndarray | None  # (N, C, H, W) the corrupted inputs, when the noise was added here


@dataclass(frozen=True)
class NoiseSpec:
    kind: NoiseKind
    level: float  # gaussian: std; salt-and-pepper and masking: fraction of pixels hit
    seed: int = 0


@dataclass(frozen=True)
class AnomalyScores:
    score: str  # the score kind, e.g. "reconstruction"
    raw: np.ndarray  # (N,)
    normalised: np.ndarray  # (N,) in (0, 1); the threshold maps to 0.5
    threshold: float
    is_anomaly: np.ndarray  # (N,) bool
    heatmaps: np.ndarray | None  # (N, C, H, W)


#: Where seeds come from when a request names none (seeded from OS entropy at import). Only the event loop
#: thread draws from it; the seed is returned, so any draw can be repeated exactly.
_SEEDS = random.Random()
_RandomState = np.random.RandomState  # numpy loads np.random on first use: at import, not on a first request
_LOCAL = threading.local()  # one reusable generator per thread (see `seeded`)


def seeded(seed: int) -> np.random.RandomState:
    """The random stream of `seed` (0 to 2**63 - 1): NumPy's MT19937 `RandomState`, seeded with it.

    Same seed, same stream: this mapping is what makes `sample` and `corrupt` repeatable, so changing it
    changes what a seed means. `RandomState` because its streams are frozen across NumPy versions (NEP 19),
    so a seed keeps its images through upgrades, and because re-seeding one instance in place is cheap:
    `np.random.default_rng(seed)` builds a SeedSequence and a bit generator each time, ~25 us of a ~200 us
    sample request (bench/serving_breakdown.py). One instance per thread; use the result before the next
    `seeded` call on the same thread.
    """
    rs = getattr(_LOCAL, "rs", None)
    if rs is None:
        rs = _LOCAL.rs = _RandomState(0)
    if seed < 2**32:
        rs.seed(seed)
    else:  # MT19937's init_by_array takes 32-bit words
        rs.seed([seed & 0xFFFFFFFF, seed >> 32])
    return rs


# --- helpers ------------------------------------------------------------------------------------
def require(mv: ModelVersion, capability: str, why: str = "") -> None:
    """Raise CapabilityMissing unless the manifest declares `capability`."""
    if capability not in mv.manifest.capabilities:
        raise CapabilityMissing(mv.name, capability, list(mv.manifest.capabilities), why)


async def _run(
    rt: Runner, mv: ModelVersion, graph: str, x: np.ndarray, client_latents: bool = False,
    y: np.ndarray | None = None,
) -> list[np.ndarray]:
    """One graph on x (and, for a conditional model's graph that takes one, the labels y (N, K)); outputs in
    the manifest's order. A graph that takes no label ignores y; one that needs it and has none is a 422.

    With `client_latents` the outputs are checked to be finite: latents a client sends may be finite float32
    far outside the prior (up to 3.4e38), which overflow inside the network, and a NaN would reach the answer
    as a JSON null or an undefined pixel; refused instead. Images are clipped to the model's value range and
    prior draws are bounded (temperature <= 10), so their paths skip the check (~4 us a call)."""
    spec = mv.manifest.graphs[graph]
    ls = mv.manifest.labels
    label_input = None if ls is None else ls.inputs.get(graph)
    if label_input is None:
        feeds = {spec.inputs[0].name: np.ascontiguousarray(x, dtype=np.float32)}
    else:
        if y is None:
            raise labels.needed(mv, graph)
        main = next(t.name for t in spec.inputs if t.name != label_input)
        feeds = {main: np.ascontiguousarray(x, dtype=np.float32), label_input: y}
    out = await rt.infer(mv, graph, feeds)
    outs = [out[t.name] for t in spec.outputs]
    if client_latents:
        for t, a in zip(spec.outputs, outs, strict=True):
            if not np.isfinite(a).all():
                raise InvalidInput(
                    f"the {graph} of {mv.name!r} gives non-finite values ({t.name}: NaN or infinity) for "
                    f"these latents: they are too far from what it was trained on (max |z| "
                    f"{np.abs(x).max():.3g})"
                )
    return outs


def check_latents(mv: ModelVersion, z: np.ndarray, what: str = "latents") -> np.ndarray:
    """(N, D) float32, finite, D = the model's latent dim; a fully convolutional model's codes are spatial,
    (N, C_z, h, w)."""
    with np.errstate(over="ignore"):  # float64 beyond float32 becomes inf: refused below
        z = np.asarray(z, dtype=np.float32)
    sp = mv.manifest.spatial
    if sp is not None:
        if z.ndim == 3:
            z = z[None]
        if z.ndim != 4 or z.shape[1] != sp.latent_channels or 0 in z.shape:
            raise InvalidInput(f"{what} must have shape (N, {sp.latent_channels}, h, w) for model "
                               f"{mv.name!r}, got {list(z.shape)}")
    else:
        dim = mv.manifest.latent.dim
        if z.ndim == 1:
            z = z[None, :]
        if z.ndim != 2 or z.shape[1] != dim:
            raise InvalidInput(f"{what} must have shape (N, {dim}) for model {mv.name!r}, "
                               f"got {list(z.shape)}")
    if not np.isfinite(z).all():
        raise InvalidInput(f"{what} must be finite float32 numbers: no NaN or infinite values, |x| <= 3.4e38")
    return z


# --- operations ---------------------------------------------------------------------------------
def _one_hot(mv: ModelVersion, label: np.ndarray | None, n: int, what: str = "images") -> np.ndarray | None:
    """One-hot labels (n, K) of class indices: one index serves all n, else one per item."""
    if label is None:
        return None
    if len(label) == 1:
        label = np.repeat(label, n)
    elif len(label) != n:
        raise InvalidInput(f"{len(label)} labels for {n} {what}: give one label, or one per item")
    return labels.one_hot(mv, label)


async def encode(rt: Runner, mv: ModelVersion, x: np.ndarray, label: np.ndarray | None = None) -> Encoded:
    """Latent means (and log-variances for VAEs) of images (a fully convolutional model's images mirror-padded
    to its multiple first: their codes are spatial). A conditional model's code is the style: what is left
    of the image once its class (label: indices, one or one per image; for an encoder that takes it) is
    known."""
    require(mv, "encode")
    if mv.manifest.spatial is not None:
        x = np.stack([spatial.pad_to_multiple(img, mv.manifest.spatial.multiple) for img in x])
    outs = await _run(rt, mv, "encoder", x, y=_one_hot(mv, label, len(x)))
    return Encoded(mean=outs[0], logvar=outs[1] if len(outs) > 1 else None)


async def decode(rt: Runner, mv: ModelVersion, z: np.ndarray, label: np.ndarray | None = None) -> np.ndarray:
    """Images from latents (and, for a conditional model, class indices: one, or one per latent)."""
    require(mv, "decode")
    z = check_latents(mv, z)
    y = _one_hot(mv, label, len(z), "latents")
    return (await _run(rt, mv, "decoder", z, client_latents=True, y=y))[0]


def _sqrt_cov(cov: np.ndarray) -> np.ndarray:
    """A matrix L with L @ L.T = cov; eigen-decomposition tolerates the semi-definite covariances of fits."""
    w, v = np.linalg.eigh(np.asarray(cov, dtype=np.float64))
    return v * np.sqrt(np.clip(w, 0.0, None))


#: A fitted prior as arrays, by the prior object's identity (manifests are immutable): a 40-component GMM
#: costs ~1.8 ms of list conversion and eigendecompositions, which a sample request should not pay each time.
#: Event loop only.
_ARRAYS: dict[int, tuple[GaussianPrior | GMMPrior, tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}


def _prior_arrays(prior: GaussianPrior | GMMPrior) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(weights (K,), means (K, D), covariance roots (K, D, D)); K = 1 for a Gaussian. Computed once."""
    hit = _ARRAYS.get(id(prior))
    if hit is not None and hit[0] is prior:
        return hit[1]
    if isinstance(prior, GaussianPrior):
        weights, means, covs = [1.0], [prior.mean], [prior.cov]
    else:
        weights, means, covs = prior.weights, prior.means, prior.covs
    w = np.asarray(weights, dtype=np.float64)
    arrays = (w / w.sum(), np.asarray(means), np.stack([_sqrt_cov(np.asarray(c)) for c in covs]))
    if len(_ARRAYS) >= 256:  # versions come and go with reloads: keep the cache bounded
        _ARRAYS.clear()
    _ARRAYS[id(prior)] = (prior, arrays)
    return arrays


def _draw_from(prior: GaussianPrior | GMMPrior | NormalPrior, eps: np.ndarray, u: np.ndarray,
               temperature: float) -> np.ndarray:
    """Codes of one prior from standard normal noise eps (M, D) and uniforms u (M,) (the mixture component):
    the same (eps, u) through each class's prior is "the same style" in every class."""
    if isinstance(prior, NormalPrior):
        return temperature * eps
    p, means, roots = _prior_arrays(prior)
    comp = np.minimum(np.searchsorted(np.cumsum(p), u, side="right"), len(p) - 1)
    return means[comp] + temperature * np.einsum("nij,nj->ni", roots[comp], eps)


def draw_styles(
    mv: ModelVersion, n: int, idx: np.ndarray | None, rng: np.random.RandomState, temperature: float = 1.0,
    shared: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Codes (n, D) float32 and classes (n,) of n images of classes idx (drawn uniformly after the codes'
    noise when None, so a seed's styles are the same whether the classes are given or drawn). Each code
    comes from its class's prior when the model has them, else from the latent prior. `shared`: one draw of
    noise for all n (one style, in every class)."""
    ls = labels.label_set(mv)
    latent, k = mv.manifest.latent, len(ls.names)
    m = 1 if shared else n
    if ls.class_priors is None:
        z = draw_prior(latent, m, rng, temperature)
        idx = rng.randint(k, size=n).astype(np.int64) if idx is None else idx
        return (np.repeat(z, n, axis=0) if shared else z), idx
    eps, u = rng.standard_normal((m, latent.dim)), rng.random_sample(m)
    idx = rng.randint(k, size=n).astype(np.int64) if idx is None else idx
    if shared:
        eps, u = np.repeat(eps, n, axis=0), np.repeat(u, n)
    z = np.empty((n, latent.dim), dtype=np.float64)
    for c in np.unique(idx):
        rows = idx == c
        z[rows] = _draw_from(ls.class_priors[int(c)], eps[rows], u[rows], temperature)
    return z.astype(np.float32), idx


def one_style(mv: ModelVersion, classes: Sequence[int], seed: int | None = None) -> tuple[int, np.ndarray]:
    """One style (one draw of the code's noise, from `seed`; picked and returned when None) as a code of each
    of `classes` (len(classes), D): the same code, unless each class has its own prior."""
    if seed is None:
        seed = _SEEDS.getrandbits(32)
    z, _ = draw_styles(mv, len(classes), np.asarray(classes, dtype=np.int64), seeded(seed), shared=True)
    return seed, z


def draw_prior(
    latent: LatentSpec, n: int, rng: np.random.RandomState, temperature: float = 1.0
) -> np.ndarray:
    """n codes (float32) from a model's latent prior; temperature scales the deviation from the (component)
    mean."""
    prior = latent.prior
    if prior.kind == "normal":  # a string test: isinstance on pydantic models goes through ABCMeta
        z = rng.standard_normal((n, latent.dim)).astype(np.float32)
        if temperature != 1.0:
            z *= np.float32(temperature)
        return z
    eps = rng.standard_normal((n, latent.dim))  # (N, D)
    if isinstance(prior, GaussianPrior):
        _, means, roots = _prior_arrays(prior)
        z = means[0] + temperature * eps @ roots[0].T
    else:
        assert isinstance(prior, GMMPrior)  # the manifest's prior union is closed
        p, means, roots = _prior_arrays(prior)
        comp = rng.choice(len(p), size=n, p=p)
        z = means[comp] + temperature * np.einsum("nij,nj->ni", roots[comp], eps)
    return z.astype(np.float32)


async def sample(
    rt: Runner, mv: ModelVersion, n: int, seed: int | None = None, temperature: float = 1.0,
    label: np.ndarray | None = None, shared_style: bool = False,
) -> Sampled:
    """n images decoded from prior draws. Same seed, same bytes; without a seed one is picked and returned.

    A conditional model draws image i as class label[i] (N,); without labels the classes are drawn too,
    uniformly, from the same seed. `shared_style`: one style (one draw of the code's noise) for all n."""
    require(mv, "sample")
    if n < 1:
        raise InvalidInput("n must be at least 1")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise InvalidInput("temperature must be a finite number >= 0")
    if seed is None:
        seed = _SEEDS.getrandbits(32)
    rng = seeded(seed)
    if mv.manifest.labels is None:
        if label is not None:
            labels.label_set(mv)  # raises: not conditional
        z = draw_prior(mv.manifest.latent, 1 if shared_style else n, rng, temperature)
        z = np.repeat(z, n, axis=0) if shared_style else z
        return Sampled(images=(await _run(rt, mv, "decoder", z))[0], latents=z, seed=seed)
    z, label = draw_styles(mv, n, label, rng, temperature, shared_style)
    images = (await _run(rt, mv, "decoder", z, y=labels.one_hot(mv, label)))[0]
    return Sampled(images=images, latents=z, seed=seed, labels=label)


def path(a: np.ndarray, b: np.ndarray, steps: int, method: Method) -> tuple[np.ndarray, np.ndarray]:
    """`steps` points from a to b (both included): linear, or spherical (slerp) when the angle allows."""
    if not MIN_STEPS <= steps <= MAX_STEPS:
        raise InvalidInput(f"steps must be between {MIN_STEPS} and {MAX_STEPS}, got {steps}")
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    t = np.linspace(0.0, 1.0, steps)  # (S,)
    omega = 0.0
    if method == "slerp":
        na, nb = np.linalg.norm(a64), np.linalg.norm(b64)
        if na > 0 and nb > 0:
            omega = float(np.arccos(np.clip(np.dot(a64 / na, b64 / nb), -1.0, 1.0)))
    if method == "slerp" and 1e-6 < omega < np.pi - 1e-6:
        s = np.sin(omega)
        z = (np.sin((1 - t) * omega) / s)[:, None] * a64 + (np.sin(t * omega) / s)[:, None] * b64
    else:  # linear, or slerp between (anti-)parallel vectors where it is undefined
        z = (1 - t)[:, None] * a64 + t[:, None] * b64
    z = z.astype(np.float32)
    z[0], z[-1] = a, b  # endpoints exactly as given
    return z, t


async def interpolate(
    rt: Runner,
    mv: ModelVersion,
    start: np.ndarray,
    end: np.ndarray,
    steps: int = 8,
    method: Method = "linear",
    between: tuple[int, int] | None = None,
) -> Interpolated:
    """Images along a path between two latents (D,) or two images (C, H, W), encoded to their means first.

    A conditional model's path also goes from class between[0] to class between[1] (the same class twice
    holds it), its label a mix of the two; an image end is encoded with its end's class. With the same code
    at both ends, only the class moves: one style, from one class to the other."""
    require(mv, "interpolate")
    ends = []
    for i, (what, v) in enumerate((("start", start), ("end", end))):
        if v.ndim == 3:  # an image
            require(mv, "encode", f" (needed to interpolate from an image {what})")
            v = (await encode(rt, mv, v[None], None if between is None else np.array([between[i]]))).mean[0]
        ends.append(check_latents(mv, v, what)[0])
    z, t = path(ends[0], ends[1], steps, method)
    y = None if between is None else labels.mix(mv, between[0], between[1], t)
    images = (await _run(rt, mv, "decoder", z, client_latents=True, y=y))[0]
    return Interpolated(images=images, latents=z, t=t)


async def restyle(
    rt: Runner, mv: ModelVersion, x: np.ndarray, target: np.ndarray | None = None,
    source: np.ndarray | None = None,
) -> Restyled:
    """Each image's style (its code, encoded with its own class `source` (N,) when the encoder takes one)
    decoded as class target[i]; without targets, as every class (image-major): the analogies of Kingma et
    al. 2014, "Semi-supervised learning with deep generative models", section 5.2."""
    require(mv, "restyle")
    k = len(labels.label_set(mv).names)
    style = (await encode(rt, mv, x, source)).mean
    n = len(x)
    if target is None:
        src, target = np.repeat(np.arange(n), k), np.tile(np.arange(k), n)
    else:
        src, target = np.arange(n), np.broadcast_to(target, (n,)) if len(target) == 1 else target
    images = (await _run(rt, mv, "decoder", style[src], y=_one_hot(mv, target, len(src))))[0]
    return Restyled(images=images, style=style, source=src, labels=target)


async def _autoencode(rt: Runner, mv: ModelVersion, x: np.ndarray, label: np.ndarray | None = None
                      ) -> np.ndarray:
    """decode(encode(x)) (with class indices, one or one per image, for a conditional model); a fully
    convolutional model's images each at their own size, in tiles."""
    y = _one_hot(mv, label, len(x))

    async def through(batch: np.ndarray) -> np.ndarray:
        mean = (await _run(rt, mv, "encoder", batch, y=y))[0]
        return (await _run(rt, mv, "decoder", mean, y=y))[0]

    sp = mv.manifest.spatial
    if sp is None:
        return await through(x)
    return np.stack([await spatial.tiled(img, sp, through) for img in x])


async def reconstruct(rt: Runner, mv: ModelVersion, x: np.ndarray, label: np.ndarray | None = None
                      ) -> Reconstructed:
    """decode(encode(x)) and the per-image mean squared error (a conditional model's with its classes)."""
    require(mv, "reconstruct")
    x_hat = await _autoencode(rt, mv, x, label)
    mse = np.square(x - x_hat, dtype=np.float32).reshape(len(x), -1).mean(axis=1)
    return Reconstructed(images=x_hat, mse=mse)


def corrupt(x: np.ndarray, noise: NoiseSpec, value_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """Seeded corruption: gaussian (std = level), salt-and-pepper or masking (level = fraction of pixels)."""
    lo, hi = value_range
    if noise.level < 0 or (noise.kind != "gaussian" and noise.level > 1):
        raise InvalidInput(f"noise level {noise.level} out of range for {noise.kind}")
    rng = seeded(noise.seed)
    if noise.kind == "gaussian":
        noisy = x + rng.normal(0.0, noise.level, size=x.shape) * (hi - lo)
    elif noise.kind == "salt-and-pepper":
        hit = rng.random(x.shape) < noise.level
        noisy = np.where(hit, np.where(rng.random(x.shape) < 0.5, lo, hi), x)
    else:  # masking
        noisy = np.where(rng.random(x.shape) < noise.level, lo, x)
    return np.clip(noisy, lo, hi).astype(np.float32)


async def denoise(rt: Runner, mv: ModelVersion, x: np.ndarray, noise: NoiseSpec | None = None,
                  label: np.ndarray | None = None) -> Denoised:
    """Clean estimates decode(encode(x)); with `noise`, x is corrupted here first and returned as `noisy`."""
    require(mv, "denoise")
    noisy = corrupt(x, noise, mv.manifest.data.value_range) if noise is not None else None
    clean = await _autoencode(rt, mv, noisy if noisy is not None else x, label)
    return Denoised(images=clean, noisy=noisy)


def graph_runner(rt: Runner, mv: ModelVersion) -> scores.GraphRunner:
    """The score recipe's runner over the runtime: one single-input graph, outputs by name."""

    async def run(graph: str, a: np.ndarray) -> dict[str, np.ndarray]:
        names = [t.name for t in mv.manifest.graphs[graph].outputs]
        return dict(zip(names, await _run(rt, mv, graph, a), strict=True))

    return run


async def anomaly_score(rt: Runner, mv: ModelVersion, x: np.ndarray, heatmap: bool = False) -> AnomalyScores:
    """Raw score per manifest.anomaly (the recipe in service.store.scores), normalised: threshold -> 0.5."""
    require(mv, "anomaly-score")
    spec = mv.manifest.anomaly
    assert spec is not None  # the manifest validator guarantees it for this capability
    try:
        raw, hmap = await scores.anomaly(spec.score, spec.params, x, graph_runner(rt, mv))
    except ValueError as exc:  # a manifest whose graphs do not fit its score (e.g. vae_elbo, one output)
        raise InvalidInput(f"model {mv.name!r} cannot compute its {spec.score} score: {exc}") from exc
    raw = np.asarray(raw, dtype=np.float64)
    return AnomalyScores(
        score=spec.score,
        raw=raw,
        normalised=scores.normalise(raw, spec.threshold, spec.scale),
        threshold=spec.threshold,
        is_anomaly=raw > spec.threshold,
        heatmaps=hmap if heatmap else None,
    )
