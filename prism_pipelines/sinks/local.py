"""A local folder standing for a bucket: the embedded default and the benchmark baseline."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import BinaryIO

from prism_pipelines.errors import DestinationError
from prism_pipelines.sinks.storage import ObjectStoreSink


class LocalArchive(ObjectStoreSink):
    @property
    def folder(self) -> Path:
        return self.integration.folder

    def put(self, key: str, data: BinaryIO, size: int) -> int:
        target = self.folder / key
        temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(temporary, "wb") as out:
                shutil.copyfileobj(data, out, 1024 * 1024)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, target)  # atomic: readers see the whole file or none
        except OSError as exc:
            temporary.unlink(missing_ok=True)
            raise DestinationError(
                f"integration '{self.integration.name}': cannot write {target}: {exc.strerror}; "
                f"check that the folder exists and is writable"
            ) from None
        return 0

    def remove(self, key: str) -> None:
        (self.folder / key).unlink(missing_ok=True)

    def describe(self, key: str) -> str:
        return str(self.folder / key)
