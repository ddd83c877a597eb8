"""Base class of every typed JSON document nnkube stores (fingerprint, plans, summaries, results ...).

Documents are pydantic models with a ``schema_version``; reading a document written by an incompatible
version gives :class:`~stages.errors.SchemaVersionError`, never a ``KeyError`` deep in the code. Nothing is
ever pickled: JSON is the only on-disk format of metadata.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from stages.errors import BadInputError, SchemaVersionError
from stages.fsutil import atomic_path

D = TypeVar("D", bound="Document")


class Document(BaseModel):
    """A versioned JSON document.

    Subclasses set ``SCHEMA_VERSION`` (an int bumped on incompatible changes) and ``KIND`` (a short name used
    in error messages).
    """

    model_config = ConfigDict(extra="forbid")

    SCHEMA_VERSION: ClassVar[int] = 1
    KIND: ClassVar[str] = "document"

    schema_version: int = 0

    def model_post_init(self, __context: Any) -> None:  # noqa: D102
        if self.schema_version == 0:
            object.__setattr__(self, "schema_version", self.SCHEMA_VERSION)

    def to_json(self, indent: int | None = 2) -> str:
        """Serialize to JSON text."""
        return self.model_dump_json(indent=indent)

    @classmethod
    def upgrade_legacy(cls, raw: Any) -> Any:
        """Hook: turn another accepted form of this document (parsed JSON) into the current one.

        :meth:`from_json`, and so :meth:`load`, passes the parsed JSON through it before the schema check. A
        subclass that also reads, e.g., nnU-Net's own file (no ``schema_version``) returns that as a dict of the
        current schema; anything it does not recognize it returns unchanged, as this default does.
        """
        return raw

    @classmethod
    def from_json(cls: type[D], text: str | bytes, source: str = "<memory>") -> D:
        """Parse JSON text (through :meth:`upgrade_legacy`), checking the schema version first.

        Args:
            text: JSON text.
            source: Where the text came from, for error messages.
        """
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BadInputError(f"{source}: not valid JSON for a {cls.KIND} ({exc})") from exc
        raw = cls.upgrade_legacy(raw)
        if not isinstance(raw, dict):
            raise BadInputError(f"{source}: a {cls.KIND} must be a JSON object")
        version = raw.get("schema_version")
        if version != cls.SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{source}: {cls.KIND} schema_version {version!r} is not supported by this nnkube "
                f"(expected {cls.SCHEMA_VERSION}); regenerate it with this version"
            )
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise BadInputError(f"{source}: invalid {cls.KIND}: {exc}") from exc

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically to a local path (temporary file, then rename)."""
        path = Path(path)
        with atomic_path(path, suffix=".json") as tmp:
            tmp.write_text(self.to_json())
        return path

    @classmethod
    def load(cls: type[D], path: str | os.PathLike) -> D:
        """Read from a local path."""
        path = Path(path)
        if not path.is_file():
            raise BadInputError(f"{path}: {cls.KIND} not found")
        return cls.from_json(path.read_text(), source=str(path))


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Write plain JSON (for formats fixed by nnU-Net, e.g. summary.json) atomically."""
    path = Path(path)
    with atomic_path(path, suffix=".json") as tmp, open(tmp, "w") as fh:
        json.dump(obj, fh, indent=indent, default=_json_default)
    return path


def _json_default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")
