"""Download files into the local cache, checking their hash; nothing torn is ever cached.

The cache is ``$RESNETS_CACHE`` if set, else ``~/.cache/resnets``. A file lands there only
after all its bytes arrived and its hash matched (it is written to a temporary name and
renamed), so an interrupted or corrupt transfer leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.error
import urllib.request
from http.client import HTTPException
from pathlib import Path

from tqdm import tqdm

from ..errors import ResnetsError
from ..fileio import atomic_path

CHUNK_SIZE = 1 << 20
TIMEOUT_S = 30


def cache_dir() -> Path:
    """Where downloaded weights are kept: ``$RESNETS_CACHE`` or ``~/.cache/resnets``."""
    return Path(os.environ.get("RESNETS_CACHE") or Path.home() / ".cache" / "resnets")


def cached_download(url: str, filename: str, sha256: str | None = None, hash_prefix: str | None = None,
                    progress: bool = True) -> Path:
    """The cached copy of ``url`` (downloaded on first use) as ``cache_dir()/filename``.

    ``sha256`` is the file's full SHA-256; ``hash_prefix`` its first hex digits where that is all
    the publisher gives (torchvision puts 8 of them in its file names). A mismatch, a broken
    transfer or no network raises a one-line :class:`ResnetsError` naming where to put the file.
    """
    target = cache_dir() / filename
    if target.is_file():
        return target
    expected = (sha256 or hash_prefix or "").lower()
    with atomic_path(target) as tmp:
        digest = _fetch(url, tmp, target, progress)
        if expected and not digest.startswith(expected):
            raise ResnetsError(f"{url} has SHA-256 {digest[:16]}..., expected {expected[:16]}...; the download "
                               f"is corrupt or the file changed: fetch a good copy and put it at {target}")
    return target


def _fetch(url: str, tmp: Path, target: Path, progress: bool) -> str:
    """Stream ``url`` into ``tmp``; return the SHA-256 of what arrived."""
    hasher = hashlib.sha256()
    where = f"download it by other means and put it at {target}"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(tmp, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            received = 0
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=target.name,
                      disable=not progress, file=sys.stderr) as bar:
                while chunk := response.read(CHUNK_SIZE):
                    out.write(chunk)
                    hasher.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as error:
        raise ResnetsError(f"cannot download {url} (HTTP {error.code}); {where}") from None
    except urllib.error.URLError as error:
        raise ResnetsError(f"cannot download {url} (offline? {error.reason}); {where}") from None
    except (HTTPException, OSError) as error:
        raise ResnetsError(f"download of {url} was interrupted ({type(error).__name__}); retry, or {where}") from None
    if total is not None and received != total:
        raise ResnetsError(f"download of {url} was interrupted after {received} of {total} bytes; retry, or {where}")
    return hasher.hexdigest()
