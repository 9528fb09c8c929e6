"""A local folder standing for a bucket: the embedded default and the benchmark baseline."""

from __future__ import annotations

import fcntl
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from prism_pipelines.errors import DestinationError
from prism_pipelines.sinks.storage.base import MANIFEST_NAME, StorageSink

#: the temporary files ``_temporary_beside`` names: a batch's file, and the manifest
TEMPORARY_FILES = (".batch_*.tmp", f".{MANIFEST_NAME}.*.tmp")


class LocalSink(StorageSink):
    @property
    def folder(self) -> Path:
        return self.integration.folder

    @contextmanager
    def staging(self, key: str) -> Iterator[BinaryIO]:
        """A hidden temporary file beside the target: the batch is compressed straight into it
        and ``put`` renames it, so the file is neither held in memory nor copied."""
        target = self.folder / key
        temporary = _temporary_beside(target)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            file = open(temporary, "w+b")  # noqa: SIM115 - closed below, after put() or failure
        except OSError as exc:
            raise self._cannot_write(target, exc) from None
        try:
            with file:
                yield file
        finally:
            temporary.unlink(missing_ok=True)  # put() renamed it away, unless the batch failed

    def put(self, key: str, data: BinaryIO, size: int, replaces: str | None, attempt: str) -> str:
        target = self.folder / key
        staged = Path(getattr(data, "name", "") or "")
        temporary = staged if staged.parent == target.parent else _temporary_beside(target)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if temporary == staged:
                data.flush()
                os.fsync(data.fileno())
            else:
                with open(temporary, "wb") as out:
                    shutil.copyfileobj(data, out, 1024 * 1024)
                    out.flush()
                    os.fsync(out.fileno())
            with _locked(target.parent):
                published = self._swap_in(key, temporary, target, replaces)
            # The rename is durable only once the folder is: before the ledger records it.
            _fsync(target.parent)
            return published
        except OSError as exc:
            raise self._cannot_write(target, exc) from None
        finally:
            if temporary != staged:
                temporary.unlink(missing_ok=True)

    def _swap_in(self, key: str, temporary: Path, target: Path, replaces: str | None) -> str:
        """The local folder's conditional write, under the hour folder's lock. A first publish
        is a hard link, which fails if the name exists, so it never replaces a file; a replace
        first checks that the file is still the one the ledger recorded (inode, mtime, size),
        and the lock keeps another run from slipping in between that check and the rename.
        A temporary file gone missing was removed by a newer run's ``clean_up``."""
        try:
            if replaces is None:
                try:
                    os.link(temporary, target)
                except FileExistsError:
                    raise self.superseded(key) from None
                return _identity(target)
            try:
                current = _identity(target)
            except FileNotFoundError:
                current = None
            if current != replaces:
                raise self.superseded(key)
            os.replace(temporary, target)  # atomic: readers see the whole file or none
            return _identity(target)
        except FileNotFoundError:
            if not temporary.exists():
                raise self.superseded(key) from None
            raise

    def clean_up(self, partition: datetime, stale_after: float) -> None:
        """Delete the temporary files (``.batch_*.tmp``, ``._manifest.json.*.tmp``) crashed
        runs left in the hour's folder, in the integration's layout. Only those untouched for
        ``stale_after`` seconds: a live run writes its own continuously."""
        folder = self.folder / self.folder_of(partition)
        cutoff = time.time() - stale_after
        for pattern in TEMPORARY_FILES:
            for temporary in folder.glob(pattern):
                try:
                    if temporary.stat().st_mtime < cutoff:
                        temporary.unlink()
                except FileNotFoundError:
                    pass  # another sync's clean-up came first

    def remove(self, key: str, version: str) -> None:
        target = self.folder / key
        try:
            with _locked(target.parent):  # as in _swap_in: no write slips in after the check
                if _identity(target) != version:
                    raise self.superseded(key)
                target.unlink()
        except FileNotFoundError:
            pass  # nothing to remove

    def published_version(self, location: str) -> str | None:
        path = self.folder / location
        try:
            return _identity(path)
        except (FileNotFoundError, NotADirectoryError):
            return None  # not there (a file where a folder should be: the write says so)
        except OSError as exc:
            raise DestinationError(
                f"integration '{self.integration.name}': cannot read {path}: {exc.strerror}; "
                f"check that the folder exists and is readable"
            ) from None

    def describe(self, key: str) -> str:
        return str(self.folder / key)

    def _cannot_write(self, target: Path, exc: OSError) -> DestinationError:
        return DestinationError(
            f"integration '{self.integration.name}': cannot write {target}: {exc.strerror}; "
            f"check that the folder exists and is writable"
        )


def _temporary_beside(target: Path) -> Path:
    return target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")


def _identity(path: Path) -> str:
    """What tells one file under a name from a later one: inode, mtime (ns) and size."""
    info = os.stat(path)
    return f"{info.st_ino}-{info.st_mtime_ns}-{info.st_size}"


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive ``flock`` on the folder itself (no lock file among the data files)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _fsync(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
