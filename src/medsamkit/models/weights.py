"""Weight files: where they come from, the download cache, checksums and strict checkpoint loading.

Cache directory: ``$MEDSAMKIT_CACHE`` if set, else ``$XDG_CACHE_HOME/medsamkit``, else ``~/.cache/medsamkit``.
Downloads go to a temporary file in the cache directory, are checked against their sha256 and only then
renamed into place (atomic), so a cached file is always complete and verified.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError

if TYPE_CHECKING:
    import torch
    from torch import nn

CACHE_ENV = "MEDSAMKIT_CACHE"


class WeightsError(InputError, RuntimeError):
    """A weight file could not be found, downloaded, verified or loaded (exit 2: the model or checkpoint the
    user named cannot be used as given)."""


def cache_dir() -> Path:
    """The medsamkit cache directory (created on demand by the writers, not here)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "medsamkit"


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


_DIGEST_MEMO: dict[tuple[str, int, int], str] = {}


def file_digest(path: str | os.PathLike[str]) -> str:
    """sha256 of a file, remembered in-process by (path, size, mtime) so a large checkpoint is hashed once."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGEST_MEMO:
        _DIGEST_MEMO[key] = sha256_file(path)
    return _DIGEST_MEMO[key]


@dataclass(frozen=True)
class PackageFile:
    """A file shipped inside an installed Python distribution (found without importing the package)."""

    package: str  # top-level import name
    relpath: str  # path inside the package directory
    install_hint: str = ""

    def locate(self) -> Path | None:
        try:
            spec = importlib.util.find_spec(self.package)
        except (ImportError, ValueError):
            return None
        if spec is None or not spec.submodule_search_locations:
            return None
        for root in spec.submodule_search_locations:
            p = Path(root) / self.relpath
            if p.is_file():
                return p
        return None

    def expected(self) -> str:
        """Where the file would be: its path inside the installed package, or ``package NAME: RELPATH`` when the
        package itself is not installed (for a "missing file" message)."""
        try:
            spec = importlib.util.find_spec(self.package)
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.submodule_search_locations:
            for root in spec.submodule_search_locations:
                return str(Path(root) / self.relpath)
        return self.describe()

    def describe(self) -> str:
        return f"package {self.package}: {self.relpath}"


@dataclass(frozen=True)
class UrlFile:
    """A file at a URL. When ``member`` is set the URL is a zip archive (e.g. a wheel) holding the file;
    ``archive_sha256`` then checks the archive and the entry's own sha256 checks the extracted member."""

    url: str
    member: str | None = None
    archive_sha256: str | None = None

    def describe(self) -> str:
        return self.url + (f" (member {self.member})" if self.member else "")


def _progress(total: int | None, desc: str) -> Any:  # pragma: no cover - cosmetic
    """A tqdm byte progress bar (``update(n)``, ``close()``), or None without tqdm."""
    try:
        from tqdm import tqdm

        return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, leave=False)
    except ImportError:
        return None


def download(url: str, dest: Path, sha256: str | None, timeout: float = 60.0, quiet: bool = False) -> Path:
    """Download ``url`` to ``dest`` atomically; when ``sha256`` is given the file must match before it is
    renamed into place (otherwise :class:`WeightsError` and nothing is left behind)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    h = hashlib.sha256()
    try:
        out = os.fdopen(fd, "wb")
        req = urllib.request.Request(url, headers={"User-Agent": "medsamkit"})
        with out, urllib.request.urlopen(req, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            bar = None if quiet else _progress(int(length) if length else None, dest.name)
            while block := resp.read(1 << 20):
                out.write(block)
                h.update(block)
                if bar is not None:
                    bar.update(len(block))
            if bar is not None:
                bar.close()
        got = h.hexdigest()
        if sha256 is not None and got != sha256.lower():
            raise WeightsError(f"checksum mismatch for {url}: expected sha256 {sha256}, got {got}")
        os.replace(tmp, dest)
        return dest
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        raise WeightsError(f"could not download {url}: {e}") from e
    finally:
        tmp.unlink(missing_ok=True)


def fetch_url_file(src: UrlFile, filename: str, sha256: str | None, quiet: bool = False) -> Path:
    """Return the cached, verified file for ``src``, downloading it when missing."""
    dest = cache_dir() / "weights" / filename
    if dest.is_file() and (sha256 is None or sha256_file(dest) == sha256):
        return dest
    if src.member is None:
        return download(src.url, dest, sha256, quiet=quiet)
    archive = cache_dir() / "downloads" / Path(src.url.split("?")[0]).name
    if not (archive.is_file() and (src.archive_sha256 is None or sha256_file(archive) == src.archive_sha256)):
        download(src.url, archive, src.archive_sha256, quiet=quiet)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=filename + ".", suffix=".part", dir=dest.parent)
    try:
        with zipfile.ZipFile(archive) as zf, zf.open(src.member) as fin, os.fdopen(fd, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
        if sha256 is not None and (got := sha256_file(tmp_name)) != sha256:
            raise WeightsError(f"checksum mismatch for {src.member} in {src.url}: expected {sha256}, got {got}")
        os.replace(tmp_name, dest)
    except (zipfile.BadZipFile, KeyError) as e:
        raise WeightsError(f"{archive} is not a zip archive holding {src.member}: {e}") from e
    finally:
        Path(tmp_name).unlink(missing_ok=True)
    return dest


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a checkpoint file as a flat ``{name: tensor}`` state dict (``weights_only``; common wrappers such
    as ``{"model": ...}`` or ``{"state_dict": ...}`` are unwrapped)."""
    import torch

    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"checkpoint not found: {p}")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or non-torch files raise many different types
        raise WeightsError(
            f"could not read checkpoint {p}: it is not a PyTorch checkpoint (a state dict saved with torch.save) or it is "
            f"corrupt ({type(e).__name__} while unpickling)"
        ) from e
    for key in ("model", "state_dict", "model_state"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise WeightsError(f"checkpoint {p} does not hold a state dict")
    return obj


def load_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str, layout: str) -> None:
    """Copy ``state_dict`` into ``module``; any missing or unexpected key (or shape mismatch) is one
    :class:`WeightsError` listing them all."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state_dict)
        if tuple(state_dict[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or shapes:

        def fmt(title: str, items: list[str]) -> str:
            if not items:
                return ""
            shown = ", ".join(items[:20]) + (f", ... ({len(items) - 20} more)" if len(items) > 20 else "")
            return f"\n  {title} ({len(items)}): {shown}"

        raise WeightsError(
            f"checkpoint {source} does not match the {layout} layout:"
            + fmt("missing keys", missing)
            + fmt("unexpected keys", unexpected)
            + fmt("shape mismatches", shapes)
        )
    module.load_state_dict(state_dict, strict=True)
