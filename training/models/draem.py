"""DRAEM-style anomaly segmentation (Zavrtanik et al., ICCV 2021): a reconstructive autoencoder and a
discriminative network trained together on synthetic anomalies, with no pretrained features.

    x (normal) --training.anomalies.synthesise--> x_aug, mask m    Perlin-shaped patches of anomaly-source
                                                                   images blended in (config: anomaly_source)
    x_hat  = sigmoid(D(E(x_aug)))        reconstruct the NORMAL image:       L2 + SSIM against x
    logits = S([x_aug, x_hat])           segment where input and normal differ: focal loss against m

Served: `encoder` and `decoder` (the reconstructive autoencoder, for reconstruct, denoise and encode) and
`segmenter`, [x, x_hat] (B, 2C, H, W) -> p(anomalous) (B, 1, H, W): the anomaly score kind "segmentation"
(service.store.scores) runs encoder -> decoder -> segmenter, and its map is the segmenter's output (gaussian-
blurred by the config's `anomaly_blur` pixels when set). The
segmenter is a small U-Net whose strided convolutions round up and whose upsampling is cropped to the skip
connection, so it runs at any H and W; with the fully convolutional backbone ("fcn") the whole model serves
maps at an image's own size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.anomalies import AnomalySource, Synthesis, synthesise
from training.models.ae import AEConfig, AutoEncoder
from training.models.base import GraphExport, ModelOutput, check_fields

VALIDATION_SEED = 1234  # validation batches get the same anomalies every epoch


@dataclass(frozen=True)
class DraemConfig(AEConfig):
    seg_channels: tuple[int, ...] = (16, 32, 32)  # U-Net widths, first level first; each next one halves
    # 1: the U-Net's first level is at full resolution; 2: at half (a quarter of the work), its map upsampled
    seg_stride: int = 1
    # where anomaly patches come from: "" (procedural Perlin noise), "skimage:<photo>+<photo>" or a folder
    anomaly_source: str = ""
    anomaly_probability: float = 0.5  # share of training images given an anomaly (DRAEM: 0.5)
    opacity: tuple[float, float] = (0.2, 1.0)  # the patch's weight in the blend (DRAEM: 1 - beta, beta < 0.8)
    perlin_scales: tuple[int, int] = (0, 4)  # mask noise of 2**k cells a side, k in this range
    patch_scale: tuple[float, float] = (0.5, 2.0)  # source window side / crop side, log-uniform
    ssim_weight: float = 1.0  # reconstruction loss = MSE + ssim_weight * (1 - SSIM)
    seg_weight: float = 1.0
    focal_gamma: float = 2.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fields(self, positive=("anomaly_probability",), non_negative=("ssim_weight", "focal_gamma"),
                     widths=("seg_channels",))
        if self.seg_stride not in (1, 2):
            raise ValueError(f"seg_stride must be 1 or 2, got {self.seg_stride}")
        if not self.seg_channels or self.anomaly_probability > 1:
            raise ValueError("seg_channels needs one width or more, and anomaly_probability must be <= 1")
        lo, hi = self.opacity
        if not 0 < lo <= hi <= 1 or not 0 <= self.perlin_scales[0] <= self.perlin_scales[1] <= 6:
            raise ValueError(f"opacity must be 0 < lo <= hi <= 1 and perlin_scales 0 <= lo <= hi <= 6, got "
                             f"{self.opacity}, {self.perlin_scales}")
        if not 0 < self.patch_scale[0] <= self.patch_scale[1]:
            raise ValueError(f"patch_scale must be 0 < lo <= hi, got {self.patch_scale}")

    def synthesis(self) -> Synthesis:
        return Synthesis(self.anomaly_probability, self.opacity, self.perlin_scales, 0.5, self.patch_scale)


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    # replicated borders, as the fcn backbone's: zero padding would light up every image and tile border
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, padding_mode="replicate")


def _block(c_in: int, c_out: int, stride: int = 1, norm: bool = True) -> nn.Sequential:
    """conv (strided: H and W halved, rounded up), norm, act, conv, norm, act."""
    def n(ch: int) -> nn.Module:
        return nn.BatchNorm2d(ch) if norm else nn.Identity()

    return nn.Sequential(_conv(c_in, c_out, stride), n(c_out), nn.LeakyReLU(0.2), _conv(c_out, c_out),
                         n(c_out), nn.LeakyReLU(0.2))


class SegmentationNet(nn.Module):
    """A U-Net: a block per level (the first at `stride`, each next one strided by 2), then back up with
    nearest 2x upsampling cropped to the skip connection's size, concatenation and a block; a 1x1 head to one
    logit per pixel (bilinear upsampled to the input when `stride` is 2). Any H and W (the crops keep odd
    sizes aligned)."""

    def __init__(self, in_channels: int, widths: tuple[int, ...], norm: bool = True, stride: int = 1) -> None:
        super().__init__()
        ins = (in_channels, *widths[:-1])
        self.stride = stride
        self.down = nn.ModuleList(_block(c, w, stride if i == 0 else 2, norm)
                                  for i, (c, w) in enumerate(zip(ins, widths, strict=True)))
        self.up = nn.ModuleList(_block(c + s, s, 1, norm)
                                for c, s in zip(widths[:0:-1], widths[-2::-1], strict=True))
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(self, x: Tensor) -> Tensor:  # (B, in_channels, H, W) -> (B, 1, H, W) logits
        h, w = x.shape[2], x.shape[3]
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
        skips.pop()
        for block in self.up:
            s = skips.pop()
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")[:, :, :s.shape[2], :s.shape[3]]
            x = block(torch.cat([x, s], dim=1))
        logits = self.head(x)
        if self.stride == 1:
            return logits
        up = F.interpolate(logits, scale_factor=float(self.stride), mode="bilinear", align_corners=False)
        return up[:, :, :h, :w]


def ssim(a: Tensor, b: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Mean structural similarity of images in [0, 1] (Wang et al. 2004; gaussian window, replicated
    borders), over channels, pixels and the batch."""
    t = torch.arange(window, dtype=a.dtype, device=a.device) - window // 2
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    g = g / g.sum()
    c = a.shape[1]
    ky, kx = g.view(1, 1, -1, 1).expand(c, 1, window, 1), g.view(1, 1, 1, -1).expand(c, 1, 1, window)

    def blur(x: Tensor) -> Tensor:  # separable: a column pass, then a row pass
        x = F.conv2d(F.pad(x, [0, 0, window // 2, window // 2], mode="replicate"), ky, groups=c)
        return F.conv2d(F.pad(x, [window // 2, window // 2, 0, 0], mode="replicate"), kx, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.mean()


def focal_loss(logits: Tensor, target: Tensor, gamma: float) -> Tensor:
    """Binary focal loss (Lin et al. 2017), mean over pixels: -(1 - p_t)^gamma log p_t."""
    log_pt = -F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (-((1 - log_pt.exp()) ** gamma) * log_pt).mean()


class Draem(AutoEncoder):
    """The reconstructive AE of the config's backbone plus a SegmentationNet over [x, x_hat]."""

    variant: ClassVar[str] = "draem"
    cfg: DraemConfig

    def __init__(self, cfg: DraemConfig) -> None:
        super().__init__(cfg)
        self.segmenter = SegmentationNet(2 * cfg.input_shape[0], cfg.seg_channels, cfg.norm == "batch",
                                         cfg.seg_stride)
        self._source: AnomalySource | None = None  # opened at the first training step: serving needs none

    def source(self) -> AnomalySource:
        if self._source is None:
            self._source = AnomalySource.open(self.cfg.anomaly_source, self.cfg.input_shape[0])
        return self._source

    def synthesise(self, x: Tensor, gen: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(x_aug, mask) for a normal batch x; the generator is seeded from torch's global one by default,
        so a seeded run draws the same anomalies."""
        if gen is None:
            gen = torch.Generator().manual_seed(int(torch.randint(2**62, (1,))))
        return synthesise(x, self.source(), self.cfg.synthesis(), gen)

    def losses(self, x: Tensor, x_aug: Tensor, mask: Tensor) -> ModelOutput:
        z = self.code(x_aug)  # (B, C_z, h, w) or (B, d)
        x_hat = self.reconstruct(z)  # (B, C, H, W): the normal image's estimate
        logits = self.segmenter(torch.cat([x_aug, x_hat], dim=1))  # (B, 1, H, W)
        rec = F.mse_loss(x_hat, x)
        struct = 1 - ssim(x_hat, x)
        seg = focal_loss(logits, mask, self.cfg.focal_gamma)
        loss = rec + self.cfg.ssim_weight * struct + self.cfg.seg_weight * seg
        terms = {"rec": rec.detach(), "ssim": struct.detach(), "seg": seg.detach()}
        return ModelOutput(loss=loss, terms=terms, recon=x_hat.clamp(0, 1), code=z)

    def forward(self, x: Tensor, phase: str = "main") -> ModelOutput:
        return self.losses(x, *self.synthesise(x))

    @torch.no_grad()
    def validation_loss(self, x: Tensor) -> Tensor:
        """The training loss on held-out normal images with anomalies drawn by a fixed seed."""
        return self.losses(x, *self.synthesise(x, torch.Generator().manual_seed(VALIDATION_SEED))).loss

    def segment(self, x: Tensor, x_hat: Tensor) -> Tensor:
        """p(anomalous) per pixel (B, 1, H, W) of images x and their reconstructions x_hat."""
        return torch.sigmoid(self.segmenter(torch.cat([x, x_hat], dim=1)))

    def anomaly_score(self) -> tuple[str, dict[str, float | str]]:
        """The segmenter's map, blurred by `anomaly_blur` pixels when it is set (service.store.scores)."""
        blur = float(self.cfg.anomaly_blur)
        return "segmentation", ({"blur_sigma": blur} if blur > 0 else {})

    def export_graphs(self) -> dict[str, GraphExport]:
        graphs = super().export_graphs()  # eval mode; encoder and decoder
        c, h, w = self.cfg.input_shape
        pair = torch.rand(2, 2 * c, h, w)
        graphs["segmenter"] = GraphExport(_Segment(self).eval(), ["x_pair"], ["anomaly_map"], pair,
                                          self.cfg.spatial)
        return graphs


class _Segment(nn.Module):
    def __init__(self, model: Draem) -> None:
        super().__init__()
        self.model = model

    def forward(self, pair: Tensor) -> Tensor:  # (B, 2C, H, W) -> (B, 1, H, W)
        c = self.model.cfg.input_shape[0]
        return self.model.segment(pair[:, :c], pair[:, c:])
