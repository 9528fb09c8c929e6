"""A local folder standing for a bucket: the embedded default and the benchmark baseline."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from prism_pipelines.errors import DestinationError
from prism_pipelines.sinks.storage.base import StorageSink


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

    def put(self, key: str, data: BinaryIO, size: int) -> None:
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
            os.replace(temporary, target)  # atomic: readers see the whole file or none
        except OSError as exc:
            temporary.unlink(missing_ok=True)
            raise self._cannot_write(target, exc) from None

    def remove(self, key: str) -> None:
        (self.folder / key).unlink(missing_ok=True)

    def describe(self, key: str) -> str:
        return str(self.folder / key)

    def _cannot_write(self, target: Path, exc: OSError) -> DestinationError:
        return DestinationError(
            f"integration '{self.integration.name}': cannot write {target}: {exc.strerror}; "
            f"check that the folder exists and is writable"
        )


def _temporary_beside(target: Path) -> Path:
    return target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
