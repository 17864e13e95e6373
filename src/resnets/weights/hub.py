"""Download files into the local cache, checking their hash; nothing torn or unchecked is used.

The cache is ``$RESNETS_CACHE`` if set, else ``~/.cache/resnets``. A file lands there only
after all its bytes arrived and its hash matched (``torch.hub.download_url_to_file`` fills a
temporary name, which is renamed), so an interrupted or corrupt transfer leaves nothing behind.

A file already in the cache is hashed again **every time it is used**, not trusted by name:
people are told to put files there by hand when offline, and a wrong or damaged file must
not load as ImageNet weights. Hashing costs about as much as reading the file, which loading
it does anyway (ResNet-152, 230 MB: a fraction of a second); a stamp file of size + mtime
would save that but could be fooled by a copy that keeps the mtime (``cp -p``).
"""

from __future__ import annotations

import hashlib
import os
import time
import urllib.error
from http.client import HTTPException
from pathlib import Path

from ..errors import ResnetsError
from ..fileio import ABANDONED_S, atomic_path

CHUNK_SIZE = 1 << 20


def cache_dir() -> Path:
    """Where downloaded weights are kept: ``$RESNETS_CACHE`` or ``~/.cache/resnets``."""
    return Path(os.environ.get("RESNETS_CACHE") or Path.home() / ".cache" / "resnets")


def cached_download(url: str, filename: str, sha256: str | None = None, hash_prefix: str | None = None,
                    progress: bool = True) -> Path:
    """The cached copy of ``url`` (downloaded on first use) as ``cache_dir()/filename``, hash-checked.

    ``sha256`` is the file's full SHA-256; ``hash_prefix`` its first hex digits where that is all
    the publisher gives (torchvision puts 8 of them in its file names). A cached file that does
    not match, a corrupt or broken transfer, or no network raises a one-line
    :class:`ResnetsError` naming the file and where a good copy goes. A file with no known hash
    is not fetched: a transfer cut short is not always reported as such (``http.client`` ends a
    short body quietly), so only the hash proves a file whole.
    """
    target = cache_dir() / filename
    expected = (sha256 or hash_prefix or "").lower()
    if not expected:
        raise ResnetsError(f"no SHA-256 is known for {url}; resnets does not use unchecked downloads: "
                           f"convert a copy you trust with `resnets convert FILE OUT.safetensors`")
    if target.is_file():
        check_cached(target, expected, url)
        return target
    _remove_abandoned_partials(target)
    with atomic_path(target) as tmp:
        _fetch(url, tmp, target, expected, progress)
    return target


def _remove_abandoned_partials(target: Path) -> None:
    """Delete ``.partial`` files of killed downloads of ``target`` (untouched for ABANDONED_S: a live
    download writes to its file continually)."""
    if not target.parent.is_dir():
        return
    for leftover in target.parent.glob(f".{target.name}.*.partial"):
        try:
            if time.time() - leftover.stat().st_mtime > ABANDONED_S:
                leftover.unlink()
        except FileNotFoundError:
            pass


def file_sha256(path: str | os.PathLike) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(CHUNK_SIZE):
            hasher.update(chunk)
    return hasher.hexdigest()


def check_cached(path: Path, expected: str, url: str = "") -> None:
    """Refuse a cached file whose SHA-256 does not start with ``expected``."""
    digest = file_sha256(path)
    if not digest.startswith(expected):
        source = f" (a good copy: {url})" if url else ""
        raise ResnetsError(f"{path}: SHA-256 {digest[:len(expected)]}... is not the expected {expected}...; the "
                           f"cached file is damaged or not the published one: delete it or replace it{source}")


def _fetch(url: str, tmp: Path, target: Path, expected: str, progress: bool) -> None:
    """Download ``url`` into ``tmp`` (progress bar on stderr), checking ``expected``."""
    from torch.hub import download_url_to_file

    where = f"download it by other means and put it at {target}"
    try:
        download_url_to_file(url, str(tmp), hash_prefix=expected or None, progress=progress)
    except urllib.error.HTTPError as error:
        raise ResnetsError(f"cannot download {url} (HTTP {error.code}); {where}") from None
    except urllib.error.URLError as error:
        raise ResnetsError(f"cannot download {url} (offline? {error.reason}); {where}") from None
    except (HTTPException, ConnectionError) as error:
        raise ResnetsError(f"download of {url} was interrupted ({type(error).__name__}); retry, or {where}") from None
    except RuntimeError as error:
        if "hash" not in str(error):
            raise
        raise ResnetsError(f"{url} does not have the expected SHA-256 {expected}...; the download was cut short, "
                           f"is corrupt or the file changed: retry, or fetch a good copy and put it at {target}") \
            from None
