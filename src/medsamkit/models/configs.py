"""Architecture descriptions (plain data, no PyTorch): encoder hyper-parameters and model specs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, Literal, cast

if TYPE_CHECKING:
    from _typeshed import DataclassInstance
    from typing_extensions import Self  # typing.Self from Python 3.11; the project supports 3.10

Pipeline = Literal["litemedsam", "sam", "medsam"]

# Labels of the unified sparse prompt: every prompt is a list of labelled points (boxes are two corners).
LABEL_PAD = -1  # padding ("not a point")
LABEL_NEGATIVE = 0
LABEL_POSITIVE = 1
LABEL_BOX_TOP_LEFT = 2
LABEL_BOX_BOTTOM_RIGHT = 3


class StoredConfig:
    """For a settings dataclass kept in a file as a dict (adapter, LoRA, U-Net input, training and fine-tune
    settings): :meth:`to_dict` is ``dataclasses.asdict``; :meth:`from_dict` passes the entries that name a field.
    Other entries are ignored, or refused with ``OptionError("unknown <_unknown>: a, b")`` when the class sets
    ``_unknown`` (a plain class attribute, not a field)."""

    _unknown: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(cast("DataclassInstance", self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        names = [f.name for f in fields(cast("type[DataclassInstance]", cls))]
        unknown = sorted(set(data) - set(names))
        if unknown and cls._unknown is not None:
            from ..errors import OptionError

            raise OptionError(f"unknown {cls._unknown}: {', '.join(unknown)}")
        return cls(**{k: data[k] for k in names if k in data})


@dataclass(frozen=True)
class ViTConfig:
    """Hyper-parameters of a SAM ViT encoder."""

    img_size: int = 1024
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    window_size: int = 14
    mlp_ratio: float = 4.0
    out_chans: int = 256


VIT_B = ViTConfig()
VIT_L = ViTConfig(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23))
VIT_H = ViTConfig(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31))


@dataclass(frozen=True)
class TinyViTConfig:
    img_size: int = 256
    stem_kernel: int = 1  # 1: LiteMedSAM (stride 1), 3: MobileSAM (stride 2, pad 1)
    embed_dims: tuple[int, ...] = (64, 128, 160, 320)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    out_chans: int = 256
    classifier_classes: int = 0  # MobileSAM's checkpoint keeps a 1000-class head

    @property
    def patch_grid(self) -> int:
        return self.img_size if self.stem_kernel == 1 else self.img_size // 4


LITEMEDSAM = TinyViTConfig()
MOBILESAM = TinyViTConfig(img_size=1024, stem_kernel=3, classifier_classes=1000)


@dataclass(frozen=True)
class ArchSpec:
    """What a checkpoint layout needs: encoder type + config, and the pixel pipeline of its family.

    ``pipeline`` names how images and prompts are mapped to the model input (see
    :mod:`medsamkit.preprocess.transforms`): ``litemedsam`` (256, official LiteMedSAM), ``sam`` (1024,
    keep aspect, pixel mean/std) or ``medsam`` (1024x1024 stretch, min-max).
    """

    name: str
    encoder: ViTConfig | TinyViTConfig
    pipeline: Pipeline

    @property
    def img_size(self) -> int:
        return self.encoder.img_size

    @property
    def embed_grid(self) -> int:
        """Side of the image embedding grid (64 for every published model)."""
        enc = self.encoder
        if isinstance(enc, ViTConfig):
            return enc.img_size // enc.patch_size
        return enc.patch_grid // 4

    @property
    def low_res(self) -> int:
        """Side of the decoder's low-res mask logits (4 x the embedding grid: 256)."""
        return 4 * self.embed_grid

    @property
    def approx_params(self) -> int:
        """Rough parameter count (12*depth*dim^2 for a ViT encoder, plus ~4 M for prompt encoder/decoder)."""
        enc = self.encoder
        if isinstance(enc, ViTConfig):
            return 12 * enc.depth * enc.embed_dim**2 + 4_000_000
        return 10_000_000
