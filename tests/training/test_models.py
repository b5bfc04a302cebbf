"""Model families: registry-parametrized behaviour (build, forward, loss decreases, export shapes) and the
maths of each family's loss checked against an independent computation.
"""

from __future__ import annotations

import math
import typing

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.linalg import subspace_angles

from service.store import scores
from service.store.manifest import Family, ScoreKind
from training.models import REGISTRY, build
from training.models.ae_contractive import ContractiveAE
from training.models.ae_denoising import DenoisingAE
from training.models.ae_sparse import SparseKLAE, SparseL1AE
from training.models.gan import GAN, generator_loss
from training.models.vae import gaussian_kl
from training.models.wae import imq_mmd

NAMES = sorted(REGISTRY)
SHAPES = {
    "mlp-8x8": {},
    "conv-28x28": {"backbone": "conv", "input_shape": (1, 28, 28)},
    "conv-32x32x3": {"backbone": "conv", "input_shape": (3, 32, 32)},
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> typing.Iterator[None]:
    """These models are tiny: one intra-op thread is faster, and it does not fight the other test workers."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    """All 1,797 8x8 digits in [0, 1], (N, 1, 8, 8)."""
    from sklearn.datasets import load_digits

    return torch.tensor(load_digits().images / 16.0, dtype=torch.float32)[:, None]


@pytest.fixture(scope="module")
def digit_labels() -> torch.Tensor:
    from sklearn.datasets import load_digits

    return torch.from_numpy(load_digits().target).long()


BATCH = torch.randperm(1797, generator=torch.Generator().manual_seed(0))[:128]


@pytest.fixture(scope="module")
def batch(digits: torch.Tensor) -> torch.Tensor:
    return digits[BATCH]


@pytest.fixture(scope="module")
def batch_labels(digit_labels: torch.Tensor) -> torch.Tensor:
    return digit_labels[BATCH]


def _make(name: str, shape: str = "mlp-8x8", seed: int = 0, **kw: object) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build(name, **SHAPES[shape], **kw)


def given(model: torch.nn.Module, y: torch.Tensor | int) -> dict[str, torch.Tensor]:
    """The label keyword for a conditional family (`y`: the labels, or a batch size for random ones); {}
    for the others."""
    if not model.conditional:
        return {}
    if isinstance(y, int):
        y = torch.randint(model.num_classes, (y,), generator=torch.Generator().manual_seed(y))
    return {"y": y}


# --- registry-parametrized --------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", NAMES)
def test_forward_returns_model_output(name: str, shape: str) -> None:
    model = _make(name, shape)
    x = torch.rand(4, *model.cfg.input_shape)
    for phases in [("main",), *(s.phases for s in model.stages())]:
        for phase in phases:
            out = model(x, phase, **given(model, 4))
            assert out.loss.ndim == 0 and torch.isfinite(out.loss), (name, phase)
            assert all(t.ndim == 0 and not t.requires_grad for t in out.terms.values()), (name, phase)
    out = model(x, **given(model, 4))
    assert out.recon is not None and out.recon.shape == x.shape
    recon = out.recon.detach()
    assert 0.0 <= float(recon.min()) and float(recon.max()) <= 1.0
    assert out.code is not None and out.code.shape == (4, model.cfg.latent_dim)


@pytest.mark.parametrize("name", NAMES)
def test_metadata(name: str) -> None:
    model = _make(name)
    assert model.family in typing.get_args(Family)
    assert model.prior_kind == ("fitted" if model.family == "ae" else "normal")
    kind, params = model.anomaly_score()
    assert kind in typing.get_args(ScoreKind)
    assert all(isinstance(v, float | str) for v in params.values())
    phases = [p for s in model.stages() for p in s.phases]
    for phase in set(phases):
        assert list(model.phase_parameters(phase)), phase


def test_variants() -> None:
    got = {n: (REGISTRY[n].model.family, REGISTRY[n].model.variant) for n in NAMES}
    assert got == {
        "ae": ("ae", "plain"), "ae-sparse-l1": ("ae", "sparse-l1"), "ae-sparse-kl": ("ae", "sparse-kl"),
        "ae-denoising": ("ae", "denoising"), "ae-contractive": ("ae", "contractive"),
        "ae-linear": ("ae", "linear"), "draem": ("ae", "draem"),
        "vae": ("vae", "plain"), "beta-vae": ("vae", "beta"), "aae": ("aae", "plain"), "wae": ("wae", "mmd"),
        "gan": ("gan", "plain"),
        "cvae": ("vae", "conditional"), "cgan": ("gan", "conditional"), "saae": ("aae", "supervised"),
    }
    assert {n for n in NAMES if REGISTRY[n].model.conditional} == {"cvae", "cgan", "saae"}


def _phase_losses(model: torch.nn.Module, x: torch.Tensor, phases: tuple[str, ...], seed: int,
                  labels: dict[str, torch.Tensor]) -> dict[str, float]:
    torch.manual_seed(seed)
    with torch.no_grad():
        return {p: float(model(x, p, **labels).loss) for p in set(phases)}


@pytest.mark.parametrize("name", NAMES)
def test_training_steps_lower_the_loss(name: str, batch: torch.Tensor, batch_labels: torch.Tensor) -> None:
    """A tiny local loop over the stages/phases interface (one Adam per phase), as the trainer runs it (a
    conditional family with the digits' labels)."""
    model = _make(name)
    labels = given(model, batch_labels)
    for stage in model.stages():
        opts = {p: torch.optim.Adam(list(model.phase_parameters(p)), lr=1e-3) for p in set(stage.phases)}
        model.eval()
        val_before = float(model.validation_loss(batch, **labels))
        before = _phase_losses(model, batch, stage.phases, 1, labels)
        model.train()
        for _ in range(40):
            for phase in stage.phases:
                opts[phase].zero_grad(set_to_none=True)
                model(batch, phase, **labels).loss.backward()
                opts[phase].step()
        model.eval()
        after = _phase_losses(model, batch, stage.phases, 1, labels)
        assert all(math.isfinite(v) for v in after.values())
        if stage.early_stopping:
            assert float(model.validation_loss(batch, **labels)) < val_before, (name, stage.name)
        else:  # an adversarial stage: the discriminator learns to tell real from fake
            assert after["disc"] < before["disc"], (name, stage.name, before, after)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", NAMES)
def test_export_graphs(name: str, shape: str) -> None:
    model = _make(name, shape)
    model.train()
    graphs = model.export_graphs()
    assert "decoder" in graphs and "encoder" in graphs
    c, h, w = model.cfg.input_shape
    d = model.cfg.latent_dim
    for gname, g in graphs.items():
        assert not any(m.training for m in g.module.modules()), f"{gname} must export in eval mode"
        with torch.no_grad():
            out = g.module(*g.examples())
        outs = out if isinstance(out, tuple) else (out,)
        assert len(outs) == len(g.output_names), gname
        b = len(g.example)
        if gname == "decoder":
            assert g.example.shape == (b, d) and outs[0].shape == (b, c, h, w)
            assert 0.0 <= float(outs[0].min()) and float(outs[0].max()) <= 1.0
        elif gname == "encoder":
            assert g.example.shape == (b, c, h, w) and all(o.shape == (b, d) for o in outs)
        else:
            assert outs[0].shape[0] == b
    if model.family == "vae":
        assert graphs["encoder"].output_names == ["z_mean", "z_logvar"]


# --- the maths --------------------------------------------------------------------------------

def test_vae_kl_is_the_closed_form(batch: torch.Tensor) -> None:
    model = _make("vae")
    torch.manual_seed(3)
    out = model(batch)
    mu, logvar = model.posterior(batch)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    expected = torch.distributions.kl_divergence(q, p).sum(dim=1)
    torch.testing.assert_close(gaussian_kl(mu, logvar), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.terms["kl"], expected.mean(), rtol=1e-5, atol=1e-5)
    # and a Monte Carlo estimate E_q[log q(z) - log p(z)] agrees, on posteriors far from the prior
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(4, 8, generator=g), torch.rand(4, 8, generator=g) * 3 - 2
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    z = q.sample((50000,))  # (S, 4, 8)
    mc = (q.log_prob(z) - torch.distributions.Normal(0.0, 1.0).log_prob(z)).sum(dim=2).mean(dim=0)
    closed = gaussian_kl(mu, logvar)
    assert float(closed.min()) > 1.0
    torch.testing.assert_close(mc, closed, rtol=0.03, atol=0.05)


def test_vae_loss_is_rec_plus_beta_kl(batch: torch.Tensor) -> None:
    model = _make("beta-vae")
    assert model.cfg.beta == 4.0
    out = model(batch)
    torch.testing.assert_close(out.loss, out.terms["rec"] + 4.0 * out.terms["kl"])


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_vae_anomaly_score_matches_the_store_definition(likelihood: str, batch: torch.Tensor) -> None:
    model = _make("vae", likelihood=likelihood)
    model.eval()
    kind, params = model.anomaly_score()
    assert kind == "vae_elbo" and params["likelihood"] == likelihood
    with torch.no_grad():
        mu, logvar = model.posterior(batch)
        x_hat = model.decode(mu)
        # the decoder at the posterior mean: -log p(x|mu) + KL, as the model computes it
        ours = -model.log_likelihood(batch, model.decoder(mu)) + gaussian_kl(mu, logvar)
    score, _ = scores.vae_elbo(batch.numpy(), x_hat.numpy(), mu.numpy(), logvar.numpy(), **params)
    np.testing.assert_allclose(score, ours.numpy(), rtol=1e-3, atol=1e-2)


def test_vae_importance_sampled_nll(batch: torch.Tensor) -> None:
    model = _make("vae")
    torch.manual_seed(0)
    x = batch[:32]
    one = model.importance_sampled_nll(x, 1)
    many = model.importance_sampled_nll(x, 64)
    assert one.shape == many.shape == (len(x),)
    assert torch.isfinite(many).all()
    # the IWAE bound tightens with k: the NLL estimate can only drop below the negative ELBO
    assert float(many.mean()) < float(one.mean())


def test_contractive_penalty_is_the_jacobian_frobenius_norm(batch: torch.Tensor) -> None:
    model = _make("ae-contractive")
    assert isinstance(model, ContractiveAE)
    x = batch[:6]
    out = model(x)
    norms = []
    for xi in x:
        jac = torch.autograd.functional.jacobian(lambda v: model.code(v[None])[0], xi)  # (d, C, H, W)
        norms.append(jac.pow(2).sum())
    expected = model.cfg.contractive * torch.stack(norms).mean()
    torch.testing.assert_close(out.terms["contractive"], expected, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(out.loss.detach(), out.terms["rec"] + expected, rtol=1e-4, atol=1e-6)


def test_contractive_penalty_trains(batch: torch.Tensor) -> None:
    """The penalty carries gradients to the encoder (create_graph): with it the Jacobian ends up smaller."""
    norms = {}
    for lam in (0.0, 1.0):
        model = _make("ae-contractive", contractive=lam)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(20):
            opt.zero_grad()
            model(batch).loss.backward()
            opt.step()
        norms[lam] = float(model.jacobian_norm2(batch)[1].mean().detach())
    assert norms[1.0] < 0.5 * norms[0.0], norms


def test_sparse_kl_penalty_matches_its_formula(batch: torch.Tensor) -> None:
    model = _make("ae-sparse-kl")
    assert isinstance(model, SparseKLAE)
    out = model(batch)
    h = torch.sigmoid(model.encoder(batch)).detach().double().numpy()
    rho, lam = model.cfg.rho, model.cfg.kl_weight
    rho_hat = h.mean(axis=0)
    expected = lam * np.sum(rho * np.log(rho / rho_hat) + (1 - rho) * np.log((1 - rho) / (1 - rho_hat)))
    assert out.terms["kl"].item() == pytest.approx(expected, rel=1e-4)
    code = out.code.detach()
    assert float(code.min()) > 0 and float(code.max()) < 1  # the sigmoid code


def test_sparse_l1_penalty_matches_its_formula(batch: torch.Tensor) -> None:
    model = _make("ae-sparse-l1")
    assert isinstance(model, SparseL1AE)
    out = model(batch)
    z = model.encoder(batch).detach()
    expected = model.cfg.l1 * z.abs().sum(dim=1).mean()
    torch.testing.assert_close(out.terms["l1"], expected)
    torch.testing.assert_close(out.loss.detach(), out.terms["rec"] + expected)


def test_gan_generator_loss_is_non_saturating(batch: torch.Tensor) -> None:
    logits = torch.linspace(-12, 6, 50, requires_grad=True)
    loss = generator_loss(logits)
    torch.testing.assert_close(loss, -torch.log(torch.sigmoid(logits)).mean())
    # not the minimax log(1 - D): that one is ~flat where D rejects the fakes (logit << 0); this one is not
    (grad,) = torch.autograd.grad(loss, logits)
    assert abs(float(grad[0])) > 0.9 / len(logits)
    # and the model's "gen" phase uses it on D(G(z))
    model = _make("gan")
    assert isinstance(model, GAN)
    model.train()
    torch.manual_seed(7)
    out = model(batch, "gen")
    torch.manual_seed(7)
    z = torch.randn(len(batch), model.cfg.latent_dim)
    d_fake = model.discriminator(torch.sigmoid(model.generator(z)))
    torch.testing.assert_close(out.loss, -F.logsigmoid(d_fake).mean())


def test_gan_stages_and_phase_parameters() -> None:
    model = _make("gan", disc_steps=3, encoder_epochs=5)
    adv, enc = model.stages()
    assert adv.phases == ("disc", "disc", "disc", "gen") and not adv.early_stopping
    assert enc.phases == ("encoder",) and enc.early_stopping and enc.epochs == 5
    ids = {p: {id(t) for t in model.phase_parameters(p)} for p in ("disc", "gen", "encoder")}
    assert ids["disc"] == {id(t) for t in model.discriminator.parameters()}
    assert ids["gen"] == {id(t) for t in model.generator.parameters()}
    assert ids["encoder"] == {id(t) for t in model.encoder.parameters()}


@pytest.mark.parametrize("shape", ["mlp-8x8", "conv-28x28"])
def test_gan_izi_f_matches_the_fanogan_score(shape: str) -> None:
    model = _make("gan", shape, kappa=0.7)
    x = torch.rand(8, *model.cfg.input_shape)
    kind, params = model.anomaly_score()
    assert (kind, params) == ("fanogan", {"kappa": 0.7})
    model.eval()
    graphs = model.export_graphs()
    assert graphs["critic"].output_names == ["features"]
    with torch.no_grad():
        x_hat = graphs["decoder"].module(graphs["encoder"].module(x))
        f_x, f_x_hat = graphs["critic"].module(x), graphs["critic"].module(x_hat)
        val = model.validation_loss(x)
    score, _ = scores.fanogan(x.numpy(), x_hat.numpy(), f_x.numpy(), f_x_hat.numpy(), **params)
    assert float(val) == pytest.approx(float(score.mean()), rel=1e-4)


def test_gan_encoder_stage_freezes_generator_and_discriminator() -> None:
    model = _make("gan", "conv-28x28")
    x = torch.rand(8, 1, 28, 28)
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("encoder.")}
    opt = torch.optim.Adam(model.phase_parameters("encoder"), lr=1e-3)
    for _ in range(3):
        opt.zero_grad()
        model(x, "encoder").loss.backward()
        opt.step()
    after = model.state_dict()
    # weights and BatchNorm running statistics of G and D are untouched
    assert all(torch.equal(v, after[k]) for k, v in state.items())


@pytest.mark.parametrize("name,module", [("gan", "generator"), ("aae", "encoder")])
def test_discriminator_phase_leaves_no_gradient_on_the_other_player(name: str, module: str) -> None:
    model = _make(name)
    model(torch.rand(16, 1, 8, 8), "disc").loss.backward()
    assert all(p.grad is None for p in getattr(model, module).parameters())
    assert any(p.grad is not None for p in model.discriminator.parameters())


def test_aae_phase_parameters(batch: torch.Tensor) -> None:
    model = _make("aae")
    assert [s.phases for s in model.stages()] == [("recon", "disc", "gen")]

    def ids(mods: list[torch.nn.Module]) -> set[int]:
        return {id(p) for m in mods for p in m.parameters()}

    assert {id(p) for p in model.phase_parameters("recon")} == ids([model.encoder, model.decoder])
    assert {id(p) for p in model.phase_parameters("disc")} == ids([model.discriminator])
    assert {id(p) for p in model.phase_parameters("gen")} == ids([model.encoder])
    model.eval()
    rec = F.mse_loss(model.decode(model.encode(batch)), batch, reduction="sum") / len(batch)
    torch.testing.assert_close(model.validation_loss(batch), rec.detach())


@pytest.mark.parametrize("kind", ["gaussian", "masking", "salt-and-pepper"])
def test_denoising_loss_is_against_the_clean_input(kind: str, batch: torch.Tensor) -> None:
    model = _make("ae-denoising", corruption=kind, noise_level=0.3)
    assert isinstance(model, DenoisingAE)
    torch.manual_seed(11)
    out = model(batch)
    torch.manual_seed(11)
    noisy = model.corrupt(batch)
    assert 0.0 <= float(noisy.min()) and float(noisy.max()) <= 1.0
    changed = float((noisy != batch).float().mean())
    assert changed > 0.1, "the corruption must change the input"
    x_hat = model.decode(model.encode(noisy))
    clean = F.mse_loss(x_hat, batch, reduction="sum") / len(batch)
    against_noisy = F.mse_loss(x_hat, noisy, reduction="sum") / len(batch)
    torch.testing.assert_close(out.loss, clean)
    assert abs(out.loss.item() - against_noisy.item()) > 1e-3


def test_imq_mmd() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 8, generator=g)
    y = torch.randn(400, 8, generator=g)
    same = float(imq_mmd(x, x))
    indep = float(imq_mmd(x, y))
    assert abs(same) < 0.05 and abs(indep) < 0.05
    shifted = [float(imq_mmd(x, y + s)) for s in (0.5, 1.0, 2.0)]
    assert shifted[0] > 5 * abs(indep) and shifted[0] < shifted[1] < shifted[2]
    # the WAE's penalty is this estimate against prior samples, weighted by lambda
    model = _make("wae")
    out = model(torch.rand(32, 1, 8, 8))
    assert float(out.terms["mmd"]) > 0 and torch.isfinite(out.loss)


def test_linear_ae_recovers_the_pca_subspace(digits: torch.Tensor) -> None:
    d = 8
    model = _make("ae-linear", latent_dim=d)
    assert not any(isinstance(m, torch.nn.LeakyReLU | torch.nn.BatchNorm2d) for m in model.modules())
    x = digits
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    for _ in range(2000):  # full batch
        opt.zero_grad()
        model(x).loss.backward()
        opt.step()
    flat = x.flatten(1).double().numpy()
    top = np.linalg.svd(flat - flat.mean(axis=0), full_matrices=False)[2][:d].T  # (64, d)
    w = model.decoder.net[0].weight.detach().double().numpy()  # (64, d)
    angle = np.degrees(subspace_angles(w, top).max())
    assert angle < 5.0, f"largest principal angle {angle:.2f} deg"
    # the exported decoder clamps to the image range
    with torch.no_grad():
        assert model.decode(torch.randn(16, d) * 10).max().item() <= 1.0


def test_gan_r1_penalty(batch: torch.Tensor) -> None:
    model = _make("gan", r1=10.0)
    x = batch[:8]
    torch.manual_seed(5)
    out = model(x, "disc")
    grads = torch.stack([
        torch.autograd.functional.jacobian(lambda v: model.discriminator(v[None])[0, 0], xi).pow(2).sum()
        for xi in x
    ])
    torch.testing.assert_close(out.terms["r1"], 5.0 * grads.mean(), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_phases_run_under_bf16_autocast(name: str) -> None:
    """The trainer runs CUDA in bf16 autocast: under CPU autocast each phase must stay finite and backprop."""
    model = _make(name)
    x = torch.rand(16, 1, 8, 8)
    for stage in model.stages():
        for phase in stage.phases:
            model.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(x, phase, **given(model, 16))
            assert torch.isfinite(out.loss), (name, phase)
            out.loss.backward()
            assert any(p.grad is not None for p in model.phase_parameters(phase)), (name, phase)
