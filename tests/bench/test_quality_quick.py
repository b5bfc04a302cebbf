"""The quality benchmark: its metric helpers on known inputs (fast), and `bench/quality.py --quick` end to end
(slow: it trains every family on digits), checking that the report, its JSON and every figure it links are
written. No timing is asserted: benchmarks are not tests.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"
sys.path.insert(0, str(BENCH))

from quality_anomaly import evaluate, mahalanobis  # noqa: E402
from quality_denoise import psnr  # noqa: E402
from quality_generation import frechet, precision_recall  # noqa: E402


def test_frechet_is_zero_for_one_set_and_grows_with_a_shift() -> None:
    f = np.random.default_rng(0).standard_normal((500, 8))
    assert frechet(f, f) == pytest.approx(0.0, abs=1e-6)
    # same covariance, mean shifted by 3 in one coordinate: the distance is the squared shift
    assert frechet(f, f + np.eye(8)[0] * 3) == pytest.approx(9.0, rel=1e-3)


def test_precision_recall_full_for_one_set_and_zero_for_far_sets() -> None:
    f = np.random.default_rng(1).standard_normal((300, 4))
    assert precision_recall(f, f, k=3) == (1.0, 1.0)
    assert precision_recall(f, f + 100.0, k=3) == (0.0, 0.0)


def test_psnr_of_a_known_error() -> None:
    clean = np.zeros((2, 1, 4, 4), dtype=np.float32)
    assert psnr(clean, clean + 0.1) == pytest.approx(20.0, rel=1e-4)  # 10 log10(1 / 0.01)


def test_evaluate_perfect_and_inverted_scores() -> None:
    is_anomaly = np.array([False] * 10 + [True] * 90)
    perfect = evaluate(is_anomaly.astype(float), is_anomaly)
    assert perfect["auroc"] == 1.0 and perfect["aupr_normal"] == 1.0
    assert evaluate(-is_anomaly.astype(float), is_anomaly)["auroc"] == 0.0


def test_mahalanobis_ranks_outliers_last() -> None:
    rng = np.random.default_rng(2)
    train = rng.standard_normal((200, 3)) * [1.0, 5.0, 0.2]
    d = mahalanobis(train, np.array([[0, 0, 0], [0, 5, 0], [0, 0, 5]], dtype=float))
    assert d[0] < d[1] < d[2]  # 5 along the narrow axis is far rarer than 5 along the wide one


def test_headline_reports_the_served_vae_prior_with_the_normal_one_beside() -> None:
    from quality_report import headline

    fds = {"gmm-on-pca (ref)": 160.0, "vae (prior=gmm)": 72.0, "vae (prior=normal)": 240.0, "gan": 90.0}
    gen = {name: {"frechet": fd, "fd_ratio_to_gmm": fd / 160.0} for name, fd in fds.items()}
    rows = headline({"datasets": {"mnist-10k": {"generation": {"generation": gen}}}})
    vae = next(r for r in rows if r.startswith("| vae"))
    assert vae.startswith("| vae (prior=gmm, as served) Fréchet ≤ 0.5 × GMM | 72.00 (×0.45)")
    assert "N(0, I) prior 240.00 (×1.50)" in vae and vae.endswith("| yes |")
    assert next(r for r in rows if r.startswith("| gan")).endswith("| no |")


def test_the_conditional_prior_is_the_closest_of_those_accurate_enough() -> None:
    from quality_conditional import choose

    proxy = {"normal": {"fd": 2.0, "acc": 0.90}, "fitted": {"fd": 3.0, "acc": 0.97},
             "class-gaussian": {"fd": 4.0, "acc": 1.0}, "restyle": {"acc": 0.99}}
    assert choose(proxy, conditional=True, target=0.95) == "fitted"  # normal is closer, but misses classes
    assert choose(proxy, conditional=False, target=0.95) == "normal"
    assert choose(proxy, conditional=True, target=1.01) == "class-gaussian"  # none meets it: most accurate


def test_headline_reports_every_conditional_model_against_the_target() -> None:
    from quality_report import headline

    per_class = {str(c): 0.99 for c in range(10)}
    models = {"cvae": {"acc": 0.99, "acc_min_seed": 0.98, "acc_per_class": per_class,
                       "acc_per_class_min_seed": per_class},
              "cgan": {"acc": 0.97, "acc_min_seed": 0.96, "acc_per_class": {**per_class, "8": 0.93},
                       "acc_per_class_min_seed": {**per_class, "8": 0.90}}}
    cond = {"target": 0.95, "judge": {"test_acc": 0.985}, "models": models}
    rows = headline({"datasets": {"mnist-10k": {"conditional": cond}}})
    assert next(r for r in rows if r.startswith("| cvae")).endswith("| yes |")
    cgan = next(r for r in rows if r.startswith("| cgan"))
    assert "worst class 8: 93.0 (worst seed 90.0)" in cgan and cgan.endswith("| no |")


@pytest.mark.slow
@pytest.mark.timeout(900)  # about a minute on 2 idle cores; far longer when the CPU is shared
def test_quick_run_writes_report_json_and_figures(tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, str(BENCH / "quality.py"), "--quick", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = (out / "quality.md").read_text()
    assert "(complete)" in md
    for heading in ("## digits", "### Anomaly detection", "### Density", "### Generation", "### Denoising",
                    "### Conditional generation"):
        assert heading in md
    assert "Not comparable with Inception FID" in md
    linked = re.findall(r'src="quality/([^"]+\.png)"', md)
    assert {"roc_digits.png", "latent_digits.png", "interpolation_digits.png", "denoise_digits.png",
            "samples_digits_vae-prior-gmm.png", "samples_digits_vae-prior-normal.png",
            "samples_digits_gan.png", "conditional_digits_cvae.png", "conditional_digits_cgan.png",
            "conditional_digits_saae.png"} <= set(linked)
    for name in linked:
        png = out / "quality" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name

    res = json.loads((out / "quality.json").read_text())
    digits = res["datasets"]["digits"]
    assert f"seed **{digits['split']['seed']}**" in md and digits["split"]["test"] > 0  # the seed is recorded
    summary = digits["anomaly"]["summary"]
    from training.models import UNCONDITIONAL

    for fam in UNCONDITIONAL:  # every family, with every score it offers (conditional ones score none)
        assert {f"{fam}/recon", f"{fam}/recon-blur", f"{fam}/mahalanobis"} <= set(summary)
    assert "vae/neg-elbo" in summary and "gan/f-anogan" in summary
    for baseline in ("pca-recon", "isolation-forest", "ocsvm", "kde", "pyod-ae", "pyod-vae"):
        assert 0.0 <= summary[baseline]["auroc"] <= 1.0
    assert set(digits["density"]) == {"vae", "beta-vae"} and digits["density"]["vae"]["nll_nats"] > 0
    gen = digits["generation"]["generation"]
    assert {"vae (prior=gmm)", "vae (prior=normal)", "beta-vae (prior=gmm)", "aae", "wae", "gan", "ae+gmm",
            "gmm-on-pca (ref)", "real held-out (floor)"} <= set(gen)
    assert set(digits["denoising"]["psnr"]) == {"gaussian σ=0.2", "gaussian σ=0.4", "salt-and-pepper 20%"}
    cond = digits["conditional"]
    assert set(cond["models"]) == {"cvae", "cgan", "saae", "vae", "gan", "aae"}
    for fam in ("cvae", "cgan", "saae"):  # class accuracy per class, restyle, per-class Fréchet distances
        r = cond["models"][fam]
        assert set(r["acc_per_class"]) == {str(c) for c in range(10)} and 0 <= r["acc"] <= 1
        assert 0 <= r["restyle_acc"] <= 1 and len(r["fd_per_class"]) == 10
        assert cond["chosen"][fam] in cond["proxy"][fam]  # the prior picked on the training split
    assert 0 < cond["judge"]["test_acc"] <= 1
