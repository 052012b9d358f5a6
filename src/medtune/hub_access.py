"""Fail fast when a Hugging Face Hub id cannot be fetched: offline mode, or a Hub that does not answer.

Without this check a model or dataset id that is not in the local cache takes transformers/datasets
25-50 s of retries to fail when there is no network. Here the offline variables are honoured
(``HF_HUB_OFFLINE``, and ``HF_DATASETS_OFFLINE`` for datasets, ``TRANSFORMERS_OFFLINE`` for models),
and otherwise one HEAD request with a short timeout, made once per endpoint and process, tells
whether ``HF_ENDPOINT`` (default https://huggingface.co) answers. Anything already in the local
cache is left to the libraries, which load it without the network.
"""

from __future__ import annotations

import functools
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Literal

PROBE_TIMEOUT_S = 3.0
"""Seconds the reachability probe waits for an answer."""
MODEL_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
DATASET_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
_TRUE = {"1", "ON", "YES", "TRUE"}  # huggingface_hub's spelling of a true environment flag


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def unreachable_reason(offline_vars: tuple[str, ...]) -> str | None:
    """Why the Hub cannot be used now (an offline variable, or the probe failed), or None."""
    for var in offline_vars:
        if os.environ.get(var, "").strip().upper() in _TRUE:
            return f"{var}={os.environ[var]} is set"
    return _probe(endpoint())


@functools.cache
def _probe(url: str) -> str | None:
    """One HEAD request; any HTTP answer, even an error status, means the Hub is reachable.

    The standard library is enough for one request with a timeout (no extra dependency)."""
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=PROBE_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return None
    except (OSError, ValueError) as err:  # URLError (refused, DNS), timeout, a malformed HF_ENDPOINT
        return f"{url} does not answer ({getattr(err, 'reason', err)})"
    return None


def model_cached(repo_id: str) -> bool:
    """Whether the model's config.json is in the local Hub cache (so it loads offline)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def dataset_cached(repo_id: str) -> bool:
    """Whether the dataset was downloaded before: its Hub cache folder or a datasets cache folder exists."""
    import datasets
    from huggingface_hub import constants

    hub = Path(constants.HF_HUB_CACHE) / f"datasets--{repo_id.replace('/', '--')}"
    prepared = Path(datasets.config.HF_DATASETS_CACHE) / repo_id.replace("/", "___")
    return hub.is_dir() or prepared.is_dir()


def unavailable(kind: Literal["model", "dataset"], repo_id: str) -> str | None:
    """The error message for a Hub id that is neither in the local cache nor fetchable now, else None.

    The cache is looked at first (no network); the offline variables and the probe only then."""
    cached = model_cached(repo_id) if kind == "model" else dataset_cached(repo_id)
    reason = None if cached else unreachable_reason(MODEL_OFFLINE_VARS if kind == "model" else DATASET_OFFLINE_VARS)
    if reason is None:
        return None
    return (f"{repo_id}: this {kind} is not in the local Hugging Face cache and the Hub cannot be reached "
            f"({reason}); download it where there is network, or give a local path")
