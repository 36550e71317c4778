"""Where downloaded and derived data files live, and how they get there safely.

Every file is written to a temporary name beside its destination and moved
into place (os.replace, atomic) only once complete, and a download only once
its checksum matches: an interrupted run never leaves a half-written file that
a later run would trust.
"""
from __future__ import annotations

import hashlib
import os
import secrets
import sys
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator


class DownloadError(RuntimeError):
    """The file could not be fetched, or its checksum was not the expected one."""


def default_cache_dir() -> Path:
    """$FASTADAPT_CACHE if set, else ~/.cache/fastadapt."""
    return Path(os.environ.get("FASTADAPT_CACHE") or "~/.cache/fastadapt").expanduser()


@contextmanager
def atomic_file(destination: str | os.PathLike) -> Iterator[IO[bytes]]:
    """A binary file to write that appears at ``destination`` only if the block completes."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    # A unique name opened with "x" (rather than tempfile's private 0600 file) so the umask applies.
    partial = destination.with_name(f".{destination.name}.{os.getpid()}.{secrets.token_hex(4)}.part")
    try:
        with open(partial, "xb") as out:
            yield out
        os.replace(partial, destination)
    finally:
        partial.unlink(missing_ok=True)


#: What a failed download's message suggests; a loader that knows better replaces it (Omniglot's names its flags).
BY_HAND = "download the file yourself and point the loader at its folder"


def download(url: str, destination: str | os.PathLike, md5: str | None = None, timeout: float = 60.0) -> Path:
    """Fetch ``url`` to ``destination``; with ``md5``, a mismatch deletes the bytes and raises DownloadError."""
    destination = Path(destination)
    print(f"fastadapt: downloading {url} -> {destination}", file=sys.stderr, flush=True)
    digest, size = hashlib.md5(), 0
    try:
        with atomic_file(destination) as out, urllib.request.urlopen(url, timeout=timeout) as response:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
            if md5 is not None and digest.hexdigest() != md5.lower():
                raise DownloadError(
                    f"checksum mismatch for {url}: expected md5 {md5}, got {digest.hexdigest()} "
                    f"({size:,} bytes); nothing was kept. Retry later, or {BY_HAND}."
                )
    except OSError as error:  # urllib's URLError and HTTPError included
        raise DownloadError(
            f"could not download {url} to {destination}: {error}. "
            f"Check the network, or {BY_HAND}."
        ) from error
    print(f"fastadapt: got {size:,} bytes, md5 {'verified' if md5 else 'not checked'}", file=sys.stderr)
    return destination
