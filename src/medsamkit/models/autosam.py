"""AutoSAM: a prompt generator that replaces SAM's prompt encoder, so segmentation needs no manual prompt.

The :class:`PromptGenerator` reads the image (the model input ``(B, 3, S, S)``, as the image encoder sees it)
and/or SAM's frozen image embedding ``(B, 256, g, g)`` and produces what the prompt encoder would: a **dense**
embedding ``(B, 256, g, g)`` (added to the image embedding by the mask decoder) and ``k`` **sparse** tokens
``(B, k, 256)``. The frozen mask decoder turns them into mask logits; gradients flow through it into the
generator (Shaharabany et al., AutoSAM).

Network (:class:`AutoSamConfig`):

* image branch: the input resized to ``input_size`` (default 256), a 3x3 convolution to ``widths[0]`` channels,
  then one stage per further width, each halving the grid (3x3 stride-2 convolution, 3x3 convolution, with a
  residual 1x1 projection), until the embedding grid ``g`` is reached: ``len(widths) = 1 + log2(input_size / g)``
  (256 -> 64: three widths, default (32, 64, 128)); GroupNorm (8 groups or fewer) and ReLU after every convolution;
* embedding branch: a 1x1 convolution of the 256-channel image embedding to ``widths[-1]`` channels;
* fusion: the branches summed, a 3x3 convolution block;
* dense head: a 1x1 convolution to 256 channels, **zero-initialised**, plus a learned 256-vector initialised to
  the prompt encoder's "no mask" embedding: before training the dense prompt equals SAM's no-prompt dense
  embedding exactly;
* sparse head (k > 0): global average pooling, then a linear layer to ``k * 256`` (normal init, std 0.02).

:class:`AutoSam` bundles a ``SamModel`` and a generator: ``forward(images, embedding=None)`` gives SAM's
single-mask output (output 0) as low-res logits ``(B, 1, 4g, 4g)``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import OptionError

if TYPE_CHECKING:
    from .configs import ArchSpec
    from .sam import SamModel


@dataclass(frozen=True)
class AutoSamConfig:
    """Shape of the :class:`PromptGenerator`.

    embed_dim: SAM's prompt width (256). grid: side g of the image embedding (64 for every published model).
    input_size: side the image is resized to for the CNN (must be grid * 2**n). widths: CNN channels, one per
    resolution from input_size down to grid. num_sparse: k sparse tokens (0: dense prompt only).
    use_image / use_embedding: which inputs the generator reads (at least one).
    """

    embed_dim: int = 256
    grid: int = 64
    input_size: int = 256
    widths: tuple[int, ...] = (32, 64, 128)
    num_sparse: int = 2
    use_image: bool = True
    use_embedding: bool = True

    def __post_init__(self) -> None:
        for name in ("embed_dim", "grid", "input_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise OptionError(f"AutoSamConfig.{name} must be an integer >= 1, got {v!r}")
        if isinstance(self.num_sparse, bool) or not isinstance(self.num_sparse, int) or self.num_sparse < 0:
            raise OptionError(f"AutoSamConfig.num_sparse must be an integer >= 0, got {self.num_sparse!r}")
        widths = tuple(self.widths)
        if not widths or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
            raise OptionError(f"AutoSamConfig.widths must be positive integers, got {self.widths!r}")
        object.__setattr__(self, "widths", widths)
        if not (self.use_image or self.use_embedding):
            raise OptionError("the prompt generator needs use_image and/or use_embedding")
        if self.use_image:
            ratio = self.input_size / self.grid
            n = round(math.log2(ratio)) if ratio >= 1 else -1
            if n < 0 or 2**n * self.grid != self.input_size:
                raise OptionError(f"input_size {self.input_size} must be the grid {self.grid} times a power of two")
            if len(widths) != n + 1:
                raise OptionError(
                    f"input_size {self.input_size} -> grid {self.grid} takes {n} halvings: give {n + 1} widths, got {len(widths)}"
                )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AutoSamConfig:
        keys = ("embed_dim", "grid", "input_size", "widths", "num_sparse", "use_image", "use_embedding")
        d = {k: data[k] for k in keys if k in data}
        if "widths" in d:
            d["widths"] = tuple(d["widths"])
        return cls(**d)


def _norm(ch: int) -> nn.GroupNorm:
    groups = math.gcd(8, ch)
    return nn.GroupNorm(groups, ch)


class _ConvBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), _norm(cout), nn.ReLU(inplace=True))


class _Stage(nn.Module):
    """Halve the grid: conv3x3/2 -> conv3x3, plus a strided 1x1 projection of the input."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = _ConvBlock(cin, cout, 2)
        self.conv2 = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), _norm(cout))
        self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, 2, bias=False), _norm(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(self.conv1(x)) + self.skip(x))


class PromptGenerator(nn.Module):
    """Image and/or image embedding -> (sparse ``(B, k, 256)``, dense ``(B, 256, g, g)``) prompt embeddings."""

    def __init__(self, config: AutoSamConfig | None = None, no_mask_embed: torch.Tensor | None = None) -> None:
        super().__init__()
        self.config = cfg = config or AutoSamConfig()
        w = cfg.widths[-1]
        if cfg.use_image:
            self.stem = _ConvBlock(3, cfg.widths[0])
            self.stages = nn.ModuleList(_Stage(a, b) for a, b in zip(cfg.widths[:-1], cfg.widths[1:]))
        if cfg.use_embedding:
            self.embed_proj = nn.Sequential(nn.Conv2d(cfg.embed_dim, w, 1, bias=False), _norm(w), nn.ReLU(inplace=True))
        self.fuse = _ConvBlock(w, w)
        self.dense_head = nn.Conv2d(w, cfg.embed_dim, 1)
        nn.init.zeros_(self.dense_head.weight)
        assert self.dense_head.bias is not None  # Conv2d has a bias unless built with bias=False
        nn.init.zeros_(self.dense_head.bias)
        base = torch.zeros(cfg.embed_dim) if no_mask_embed is None else no_mask_embed.detach().reshape(-1).clone().float()
        if base.numel() != cfg.embed_dim:
            raise ValueError(f"no_mask_embed has {base.numel()} values, the prompt width is {cfg.embed_dim}")
        self.dense_bias = nn.Parameter(base)
        if cfg.num_sparse:
            self.sparse_head = nn.Linear(w, cfg.num_sparse * cfg.embed_dim)
            nn.init.normal_(self.sparse_head.weight, std=0.02)
            nn.init.zeros_(self.sparse_head.bias)

    def forward(
        self, images: torch.Tensor | None = None, embedding: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """images ``(B, 3, S, S)`` (the model input), embedding ``(B, 256, g, g)``; each needed only when the
        config reads it. Returns sparse ``(B, k, 256)`` and dense ``(B, 256, g, g)``."""
        cfg = self.config
        feats = None
        if cfg.use_image:
            if images is None:
                raise OptionError("this prompt generator reads the image: pass images (B, 3, S, S)")
            x = images
            if x.shape[-1] != cfg.input_size or x.shape[-2] != cfg.input_size:
                x = F.interpolate(x, size=(cfg.input_size, cfg.input_size), mode="bilinear", align_corners=False, antialias=True)
            x = self.stem(x)
            for stage in self.stages:
                x = stage(x)
            feats = x
        if cfg.use_embedding:
            if embedding is None:
                raise OptionError("this prompt generator reads the image embedding: pass embedding (B, 256, g, g)")
            if embedding.shape[-1] != cfg.grid or embedding.shape[-2] != cfg.grid:
                raise OptionError(f"embedding grid {tuple(embedding.shape[-2:])} != the generator's {cfg.grid}")
            e = self.embed_proj(embedding)
            feats = e if feats is None else feats + e
        assert feats is not None
        feats = self.fuse(feats)
        dense = self.dense_head(feats) + self.dense_bias.view(1, -1, 1, 1)
        b = feats.shape[0]
        if cfg.num_sparse:
            sparse = self.sparse_head(feats.mean(dim=(2, 3))).view(b, cfg.num_sparse, cfg.embed_dim)
        else:
            sparse = feats.new_zeros((b, 0, cfg.embed_dim))
        return sparse, dense


def autosam_config_for(model: SamModel, **overrides: Any) -> AutoSamConfig:
    """An :class:`AutoSamConfig` matching a ``SamModel``'s embedding grid and input size (overrides applied).
    The default widths follow the number of halvings from the input side to the grid (32, 64, 128, 256, ...)."""
    grid = int(model.spec.embed_grid)
    size = int(overrides.pop("input_size", min(int(model.spec.img_size), 4 * grid)))
    if "widths" not in overrides:
        n = max(0, round(math.log2(max(1, size // grid))))
        overrides["widths"] = tuple(32 * 2 ** min(i, 3) for i in range(n + 1))
    return AutoSamConfig(grid=grid, input_size=size, **overrides)


class AutoSam(nn.Module):
    """A ``SamModel`` whose prompt encoder is replaced by a :class:`PromptGenerator`."""

    #: set by :func:`~medsamkit.models.adapted.load_adapted` only: the adapter file's mode, base, epoch, ...
    adapter_info: dict[str, Any]

    def __init__(self, sam: SamModel, generator: PromptGenerator) -> None:
        super().__init__()
        if generator.config.grid != sam.spec.embed_grid:
            raise OptionError(f"the generator's grid {generator.config.grid} != the model's embedding grid {sam.spec.embed_grid}")
        self.sam = sam
        self.generator = generator

    @property
    def spec(self) -> ArchSpec:
        """The architecture of the wrapped ``SamModel``."""
        return self.sam.spec

    def forward(self, images: torch.Tensor | None = None, embedding: torch.Tensor | None = None) -> torch.Tensor:
        """images ``(B, 3, S, S)`` preprocessed model inputs; embedding ``(B, 256, g, g)`` (computed from
        ``images`` with the image encoder when None). Returns low-res logits ``(B, 1, 4g, 4g)``."""
        if embedding is None:
            if images is None:
                raise OptionError("give images and/or their embedding")
            embedding = self.sam.encode(images)
        sparse, dense = self.generator(images if self.generator.config.use_image else None, embedding)
        pe = self.sam.prompt_encoder.dense_pe()
        out = torch.zeros(1, dtype=torch.long, device=embedding.device)
        logits, _ = self.sam.mask_decoder.predict_all(embedding, pe, sparse.to(embedding.dtype), dense.to(embedding.dtype), out)
        return logits
