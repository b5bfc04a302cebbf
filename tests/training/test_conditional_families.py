"""The conditional families (cvae, cgan, saae): the label reaches the graphs that should see it and only
those, export with the second input `y` passes parity (one-hot and soft labels), and the published manifest
carries the label set the service reads. The registry-parametrized tests (test_models, test_export,
test_pipeline, test_trainer) cover build, forward, loss decrease and export for them too."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from service.store.manifest import Manifest
from training import calibrate, pipeline
from training.config import ConfigError, RunSpec
from training.data import DataError, ImageSet, split, synthetic
from training.export import export_model
from training.models import REGISTRY, UNCONDITIONAL, build
from training.models.base import GenerativeModel
from training.models.cgan import CGAN
from training.models.conditional import one_hot
from training.trainer import Trainer

TinySpec = Callable[..., RunSpec]
CONDITIONAL = sorted(set(REGISTRY) - set(UNCONDITIONAL))
#: graph -> takes the label, per family: the CVAE's encoder is q(z | x, y); the others' sees the image only
LABELLED = {"cvae": {"encoder": True, "decoder": True}, "cgan": {"encoder": False, "decoder": True},
            "saae": {"encoder": False, "decoder": True}}
SHAPES = {"mlp": {}, "conv": {"backbone": "conv", "input_shape": (1, 28, 28)}}

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def tiny(name: str, k: int = 4, seed: int = 0, **kw: object) -> GenerativeModel:
    torch.manual_seed(seed)
    return build(name, hidden=(32, 16), latent_dim=4, num_classes=k, **kw).eval()


def test_the_conditional_families() -> None:
    assert CONDITIONAL == ["cgan", "cvae", "saae"]
    for name in CONDITIONAL:
        model = tiny(name)
        assert model.conditional and model.num_classes == 4
    assert all(build(n).num_classes == 0 for n in UNCONDITIONAL)
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        build("cvae", num_classes=1)
    with pytest.raises(ValueError, match="unknown class_prior"):
        build("saae", class_prior="uniform")


def test_one_hot_takes_indices_and_soft_labels() -> None:
    np.testing.assert_array_equal(one_hot(torch.tensor([2, 0]), 3).numpy(), [[0, 0, 1], [1, 0, 0]])
    soft = torch.tensor([[0.5, 0.5, 0.0]])
    assert one_hot(soft, 3) is soft
    with pytest.raises(ValueError, match="needs the label"):
        one_hot(None, 3)
    with pytest.raises(ValueError, match=r"must be \(B, 3\)"):
        one_hot(torch.zeros(2, 4), 3)


def _first(out: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("backbone", SHAPES)
@pytest.mark.parametrize("name", CONDITIONAL)
def test_the_label_reaches_the_graphs_that_take_it(name: str, backbone: str) -> None:
    """Each graph's output changes with the label exactly when the family feeds it the label, and a soft
    label is a valid input that lands between its two classes."""
    torch.manual_seed(0)
    model = build(name, latent_dim=4, num_classes=4, **SHAPES[backbone]).eval()
    graphs = model.export_graphs()
    assert {g: graphs[g].num_classes > 0 for g in graphs} == LABELLED[name]
    for gname, g in graphs.items():
        first = g.examples()[0][:2]
        if not g.num_classes:
            assert g.input_names in (["x"], ["z"])
            continue
        assert g.input_names[1] == "y"
        a, b = one_hot(torch.tensor([0, 0]), 4), one_hot(torch.tensor([3, 3]), 4)
        with torch.no_grad():
            out_a, out_b, out_mid = (_first(g.module(first, y)) for y in (a, b, (a + b) / 2))
        assert not torch.allclose(out_a, out_b), gname
        assert torch.isfinite(out_mid).all() and not torch.allclose(out_mid, out_a), gname


@pytest.mark.parametrize("name", CONDITIONAL)
def test_decode_draws_from_the_label(name: str) -> None:
    model = tiny(name)
    z = torch.randn(3, 4)
    with torch.no_grad():
        by_index = model.decode(z, torch.tensor([1, 1, 1]))  # type: ignore[call-arg]
        by_one_hot = model.decode(z, one_hot(torch.tensor([1, 1, 1]), 4))  # type: ignore[call-arg]
    torch.testing.assert_close(by_index, by_one_hot)
    with pytest.raises(ValueError, match="needs the label"):
        model.decode(z)


def test_the_cgan_critic_is_a_projection_discriminator() -> None:
    model = tiny("cgan")
    assert isinstance(model, CGAN)
    x, y = torch.rand(5, 1, 8, 8), one_hot(torch.tensor([0, 1, 2, 3, 1]), 4)
    with torch.no_grad():
        phi = model.discriminator.features(x)
        projected = (phi * (y @ model.projection.weight.T)).sum(1, keepdim=True)  # <W y, phi(x)>
        expected = model.discriminator.head(phi) + projected
        torch.testing.assert_close(model.critic(x, y), expected)
    ids = {id(p) for p in model.phase_parameters("disc")}
    assert {id(p) for p in model.projection.parameters()} <= ids
    assert not {id(p) for p in model.generator.parameters()} & ids
    model.train()
    model(x, "disc", y=torch.tensor([0, 1, 2, 3, 1])).loss.backward()
    assert all(p.grad is None for p in model.generator.parameters())


@pytest.mark.parametrize("backbone", SHAPES)
@pytest.mark.parametrize("name", CONDITIONAL)
def test_export_with_the_label_input_passes_parity(name: str, backbone: str, tmp_path: Path) -> None:
    """ONNX and TorchScript graphs take (x or z, y) in that order, y (N, K) with a dynamic batch; they
    match torch at a batch never exported, for one-hot and soft labels."""
    torch.manual_seed(0)
    model = build(name, hidden=(32, 16), channels=(8, 16), latent_dim=4, num_classes=4,
                  **SHAPES[backbone]).eval()
    data = synthetic(n=40, shape=model.cfg.input_shape, seed=2)
    out = export_model(model, tmp_path, data.x, real_labels=data.y)
    assert float(out.metrics["parity_onnx_max_abs_diff"]) <= 1e-4
    rng = np.random.default_rng(0)
    for gname, spec in out.graphs.items():
        labelled = LABELLED[name][gname]
        first_name = "x" if gname == "encoder" else "z"
        assert [t.name for t in spec.inputs] == [first_name, "y"][:1 + labelled]
        if labelled:
            assert spec.inputs[1].shape == [-1, 4] and spec.inputs[1].dtype == "float32"
        sess = ort.InferenceSession(str(tmp_path / spec.file), providers=["CPUExecutionProvider"])
        assert [i.name for i in sess.get_inputs()] == [t.name for t in spec.inputs]
        first = rng.random((6, *spec.inputs[0].shape[1:]), dtype=np.float32)
        eye = np.eye(4, dtype=np.float32)
        soft = eye[[0, 1, 2, 3, 0, 1]] * 0.7 + eye[[1] * 6] * 0.3  # mixes of two classes (one, twice)
        feeds = {first_name: first, **({"y": soft} if labelled else {})}
        got = sess.run(None, feeds)
        args = [torch.from_numpy(a) for a in feeds.values()]
        with torch.no_grad():
            ref = model.export_graphs()[gname].module(*args)
        ref = ref if isinstance(ref, tuple) else (ref,)
        for r, g in zip(ref, got, strict=True):
            np.testing.assert_allclose(g, r.numpy(), atol=1e-4)
        ts = torch.jit.load(str(tmp_path / str(spec.torchscript)))
        np.testing.assert_allclose(_first(ts(*args)).numpy(), ref[0].numpy(), atol=1e-4)


def _manifest(res: pipeline.PipelineResult) -> Manifest:
    assert res.path is not None
    return Manifest.model_validate_json((res.path / "manifest.json").read_text())


@pytest.mark.parametrize("name", CONDITIONAL)
def test_the_manifest_carries_the_label_set(name: str, tmp_path: Path, tiny_spec: TinySpec) -> None:
    m = _manifest(pipeline.run(tiny_spec(name, tmp_path / "store", tmp_path / "run")))
    family, variant = {"cvae": ("vae", "conditional"), "cgan": ("gan", "conditional"),
                       "saae": ("aae", "supervised")}[name]
    assert (m.family, m.variant) == (family, variant)
    assert m.labels is not None and m.labels.names == ["0", "1", "2", "3"]  # synthetic: 4 classes
    assert m.labels.inputs == {g: "y" for g, takes in LABELLED[name].items() if takes}
    assert m.labels.class_priors is None and m.latent.prior.kind == "normal"
    for gname, input_name in m.labels.inputs.items():
        assert m.graphs[gname].inputs[1].name == input_name and m.graphs[gname].inputs[1].shape == [-1, 4]
    assert m.capabilities == ["encode", "decode", "sample", "interpolate", "reconstruct", "restyle"]
    assert m.anomaly is None
    assert float(m.metrics["test_recon_mse"]) > 0 and float(m.metrics["parity_onnx_max_abs_diff"]) <= 1e-4
    if name == "cvae":
        assert m.metrics["nll_given"] == "label" and np.isfinite(float(m.metrics["nll_is"]))


@pytest.mark.parametrize(("name", "kind"), [("saae", "gaussian"), ("cvae", "gmm")])
def test_class_priors_are_fitted_on_each_class_codes(name: str, kind: str, tmp_path: Path,
                                                     tiny_spec: TinySpec) -> None:
    spec = tiny_spec(name, tmp_path / "store", tmp_path / "run", prior_components=2)
    spec = RunSpec(spec.train, {**spec.model, "class_prior": kind})
    res = pipeline.run(spec)
    m = _manifest(res)
    assert m.labels is not None and m.labels.class_priors is not None
    assert [p.kind for p in m.labels.class_priors] == [kind] * 4
    # class c's prior is the one fitted on the codes of class c's training images
    model = res.model
    assert model is not None
    train = split(synthetic(), seed=0).train
    codes = calibrate.first(calibrate.torch_runner(model)("encoder", train.x, train.y))
    for c, prior in enumerate(m.labels.class_priors):
        want = calibrate.fit_prior(codes[train.y == c], kind, 2, seed=0)
        np.testing.assert_allclose(np.asarray(prior.model_dump()["mean" if kind == "gaussian" else "means"]),
                                   np.asarray(want.model_dump()["mean" if kind == "gaussian" else "means"]),
                                   rtol=1e-5, atol=1e-6)


def test_a_cvae_fits_its_latent_prior_on_codes_given_labels(tmp_path: Path, tiny_spec: TinySpec) -> None:
    spec = tiny_spec("cvae", tmp_path / "store", tmp_path / "run", prior_components=2)
    m = _manifest(pipeline.run(RunSpec(spec.train, {**spec.model, "prior": "gmm"})))
    assert m.latent.prior.kind == "gmm" and m.labels is not None and m.labels.class_priors is None


def test_class_names_come_from_class_folders(tmp_path: Path, tiny_spec: TinySpec) -> None:
    root = tmp_path / "shapes"
    rng = np.random.default_rng(0)
    for name, level in (("circle", 40), ("square", 200), ("star", 120)):
        (root / name).mkdir(parents=True)
        for i in range(12):
            a = np.clip(level + rng.normal(0, 10, (8, 8)), 0, 255).astype(np.uint8)
            Image.fromarray(a).save(root / name / f"{i}.png")
    m = _manifest(pipeline.run(tiny_spec("saae", tmp_path / "store", tmp_path / "run", data=str(root))))
    assert m.labels is not None and m.labels.names == ["circle", "square", "star"]
    assert m.graphs["decoder"].inputs[1].shape == [-1, 3]


def test_what_a_conditional_model_refuses_before_training(tmp_path: Path, tiny_spec: TinySpec) -> None:
    store, run = tmp_path / "store", tmp_path / "run"
    unlabelled = tmp_path / "x.npz"
    np.savez(unlabelled, x=np.random.default_rng(0).random((40, 8, 8)).astype(np.float32))
    with pytest.raises(DataError, match="needs labelled images"):
        pipeline.run(tiny_spec("cvae", store, run, data=str(unlabelled)))
    with pytest.raises(ConfigError, match="one-class mode"):
        pipeline.run(tiny_spec("cvae", store, run, normal_classes=(0,)))
    with pytest.raises(ConfigError, match="not crops"):
        pipeline.run(tiny_spec("saae", store, run, crop=8))
    assert not run.exists() or not (run / "checkpoint.pt").exists()
    # the trainer itself: a label outside 0..K-1
    data = synthetic(n=64, classes=4)
    bad = split(ImageSet("bad", data.x, data.y + 3), seed=0)
    from training.config import TrainConfig

    with pytest.raises(ConfigError, match="labelled 0..3"):
        Trainer(tiny("cgan"), TrainConfig(model="cgan", device="cpu", progress=False), None).fit(bad)


@pytest.mark.slow
@pytest.mark.parametrize("name", CONDITIONAL)
def test_samples_of_a_label_look_like_that_label(name: str) -> None:
    """Trained briefly on digits, the samples of each class are mostly recognised as that class by a
    logistic regression on the digits (a loose check; the benchmark measures it properly)."""
    from sklearn.linear_model import LogisticRegression

    from training.config import TrainConfig
    from training.data import digits

    d = digits()
    clf = LogisticRegression(max_iter=2000).fit(d.x.reshape(len(d), -1), d.y)
    epochs = {"cgan": 60, "cvae": 40, "saae": 40}[name]
    torch.manual_seed(0)
    model = build(name, hidden=(128, 64), latent_dim=8, **({"encoder_epochs": 1} if name == "cgan" else {}))
    cfg = TrainConfig(model=name, device="cpu", progress=False, epochs=epochs, patience=epochs)
    Trainer(model, cfg, None).fit(split(d, seed=0))
    y = torch.arange(10).repeat_interleave(50)
    z = torch.randn(len(y), 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        x = model.eval().decode(z, y)  # type: ignore[call-arg]
    acc = float(np.mean(clf.predict(x.reshape(len(y), -1).numpy()) == y.numpy()))
    assert acc >= 0.8, f"{name}: {acc:.2f} of the samples are classified as their label"


def test_the_zoo_ships_the_conditional_models_with_their_label_sets(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from training import zoo

    monkeypatch.setattr(zoo, "BASE_TRAIN", {**zoo.BASE_TRAIN, "epochs": 1, "steps_per_epoch": 2})
    monkeypatch.setattr(zoo, "BASE_MODEL", {"hidden": (16,)})
    monkeypatch.setitem(zoo.ZOO_TUNING, "cgan", ({"epochs": 1}, {"encoder_epochs": 1}))
    store = tmp_path / "store"
    entries = zoo.build_zoo(store, only=["cvae", "cgan"], runs=tmp_path / "runs")
    assert [e.name for e in entries] == ["cvae-digits", "cgan-digits"]
    cvae = Manifest.model_validate_json((store / "cvae-digits" / "1" / "manifest.json").read_text())
    assert cvae.labels is not None and cvae.labels.names == [str(c) for c in range(10)]
    assert cvae.labels.class_priors is not None and {p.kind for p in cvae.labels.class_priors} == {"gaussian"}
    md = (store / "ZOO.md").read_text()
    assert "Conditional models" in md
    assert "| cgan-digits | 0,1,2,3,4,5,6,7,8,9 | decoder.y | normal for every class |" in md
