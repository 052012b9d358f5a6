"""One module per source family; each turns official files (or a Hub layout) into records.

Every adapter has the signature ``(src: SourceConfig, path: Path | None, rejects: Rejects)``:
``path`` is the resolved local file or directory (None for Hub adapters, which read ``src.hub``).
Invalid rows go to ``rejects`` as :class:`~medtune.errors.DataError` naming file, location and field.
Names resolve through :data:`medtune.data.registry.ADAPTERS`.
"""
