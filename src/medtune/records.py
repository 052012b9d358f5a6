"""The base of the typed records that stages write and later stages read (an eval's scores, the report's rows).

A record is frozen (a later stage cannot change what an earlier one wrote) and its JSON is the file's
format as it always was: an optional field left unset (a perplexity has no ``stderr``, a row no
``note``) stays out of the dump instead of appearing as ``null``, so loading a file and saving it again
gives the same content.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, model_serializer


class Record(BaseModel):
    """Frozen, unknown keys refused; optional fields that were never set are left out of its JSON."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if isinstance(data, dict):
            for name in type(self).model_fields:
                if name not in self.model_fields_set and getattr(self, name) is None:
                    data.pop(name, None)
        return data


class ReadRecord(Record):
    """A record read from a file another version of medtune may have written: keys it does not know are kept
    (and saved again), not refused."""

    model_config = ConfigDict(frozen=True, extra="allow")
