"""Pure metric functions: choice log-likelihoods -> predictions -> accuracy with intervals.

Conventions follow lm-evaluation-harness: ``acc`` picks the choice with the highest summed
log-likelihood, ``acc_norm`` divides it by the choice's length in characters; ties go to the lowest
index (``numpy.argmax``); the standard error is the sample standard error of the mean (ddof=1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def check_loglikelihoods(lls: Sequence[Sequence[float]], ids: Sequence[str], task: str) -> None:
    """Refuse a non-finite choice log-likelihood, naming the task and item.

    ``argmax`` over NaNs returns 0, so a model with broken weights would otherwise score as if it
    always chose option A. Log-softmax of finite logits is finite, so -inf is refused too.
    """
    from medtune.errors import MedtuneError

    for item, row in zip(ids, lls):
        bad = [j for j, v in enumerate(row) if not math.isfinite(v)]
        if bad:
            raise MedtuneError(f"task {task}, item {item}: choice {bad[0]} has log-likelihood {row[bad[0]]} "
                               f"({len(bad)} of {len(row)} choices non-finite): the model's outputs are broken "
                               "(check its weights for NaN/inf); the item is not scored")


def predict(logprobs: Sequence[float]) -> int:
    """Index of the most likely choice; ties go to the lowest index, as in lm-eval."""
    return int(np.argmax(np.asarray(logprobs, dtype=np.float64)))


def predict_norm(logprobs: Sequence[float], choice_chars: Sequence[int]) -> int:
    """``acc_norm``: log-likelihood per character of the choice text (lm-eval's ``acc_norm``)."""
    return int(np.argmax(np.asarray(logprobs, dtype=np.float64) / np.asarray(choice_chars, dtype=np.float64)))


def stderr(values: Sequence[float]) -> float:
    """Sample standard error of the mean (lm-eval's ``mean_stderr``); 0 for fewer than 2 values."""
    n = len(values)
    if n < 2:
        return 0.0
    return float(np.std(np.asarray(values, dtype=np.float64), ddof=1) / math.sqrt(n))


def bootstrap_ci(values: Sequence[float], *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (resampling items with replacement)."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def summarize(correct: Sequence[float], *, seed: int = 0) -> dict[str, float]:
    """Mean, n, standard error and bootstrap 95 % interval of per-item scores (0/1 for accuracy)."""
    lo, hi = bootstrap_ci(correct, seed=seed)
    return {"value": float(np.mean(correct)) if len(correct) else math.nan, "n": len(correct),
            "stderr": stderr(correct), "ci95": [lo, hi]}


def by_group(correct: Sequence[float], groups: Sequence[str]) -> dict[str, dict[str, float]]:
    """:func:`summarize` per group (e.g. MedMCQA subject), groups sorted by name."""
    buckets: dict[str, list[float]] = {}
    for c, g in zip(correct, groups):
        buckets.setdefault(g, []).append(c)
    return {g: summarize(v) for g, v in sorted(buckets.items())}


def perplexity(nll_sum: float, n_tokens: int) -> float:
    """exp(mean negative log-likelihood per token)."""
    return math.exp(nll_sum / n_tokens) if n_tokens else math.nan


def group_summary(parts: Sequence[Sequence[float]], *, weight_by_size: bool, n_boot: int = 2000,
                  seed: int = 0) -> dict[str, Any]:
    """A group's accuracy from its tasks' per-item scores, as lm-eval aggregates a group.

    ``weight_by_size``: the mean over all items (lm-eval ``aggregate_subtask_metrics`` with sizes), with
    lm-eval's ``pooled_sample_stderr``; otherwise the mean of the task means, with
    ``unweighted_mean_stderr`` (sqrt(sum se_i^2) / k). The 95 % interval is a stratified percentile
    bootstrap: each task's items are resampled on their own, so every replicate keeps the task sizes."""
    arrays = [np.asarray(p, dtype=np.float64) for p in parts]
    if not arrays or any(len(a) == 0 for a in arrays):
        raise ValueError("a group needs at least one item in every task")
    sizes = np.asarray([len(a) for a in arrays], dtype=np.float64)
    means = np.asarray([a.mean() for a in arrays])
    ses = np.asarray([stderr(a) for a in arrays])
    w = sizes if weight_by_size else np.ones_like(sizes)
    value = float(np.dot(w, means) / w.sum())
    if weight_by_size:  # lm_eval.api.metrics.pooled_sample_stderr
        se = math.sqrt(float(np.sum((sizes - 1) * ses**2 * sizes) / (sizes.sum() - len(sizes))) / sizes.sum()) \
            if sizes.sum() > len(sizes) else 0.0
    else:  # lm_eval.api.metrics.unweighted_mean_stderr
        se = float(math.sqrt(np.sum(ses**2)) / len(ses))
    rng = np.random.default_rng(seed)
    boots = np.stack([a[rng.integers(0, len(a), size=(n_boot, len(a)))].mean(axis=1) for a in arrays], axis=1)
    lo, hi = np.quantile(boots @ w / w.sum(), [0.025, 0.975])  # boots: (n_boot, tasks)
    return {"value": value, "n": int(sizes.sum()), "stderr": se, "ci95": [float(lo), float(hi)],
            "weight_by_size": weight_by_size, "tasks": len(arrays)}


def paired_perplexity_change(nll_a: Sequence[float], nll_b: Sequence[float], tokens: Sequence[int], *,
                             n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Perplexity of model b minus model a on the same documents, with a percentile-bootstrap 95 % interval
    over documents (each replicate resamples documents and recomputes both perplexities from the
    resampled sums, so the pairing is kept). ``rel`` is the change as a share of a's perplexity.

    Documents are the unit because tokens inside one document are not independent; with fewer than 2
    documents there is no interval (``ci95`` is None)."""
    a, b = np.asarray(nll_a, dtype=np.float64), np.asarray(nll_b, dtype=np.float64)
    n = np.asarray(tokens, dtype=np.float64)
    if not (len(a) == len(b) == len(n)) or len(a) == 0 or n.sum() <= 0:
        raise ValueError("paired perplexity needs the same non-empty documents for both models")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("a document's log-likelihood is not finite")
    pa, pb = math.exp(a.sum() / n.sum()), math.exp(b.sum() / n.sum())
    out: dict[str, Any] = {"value": pb - pa, "rel": pb / pa - 1, "base": pa, "model": pb, "n": len(a),
                           "tokens": int(n.sum()), "ci95": None, "rel_ci95": None}
    if len(a) >= 2:
        idx = np.random.default_rng(seed).integers(0, len(a), size=(n_boot, len(a)))
        t = n[idx].sum(1)
        boot_a, boot_b = np.exp(a[idx].sum(1) / t), np.exp(b[idx].sum(1) / t)
        lo, hi = np.quantile(boot_b - boot_a, [0.025, 0.975])
        rlo, rhi = np.quantile(boot_b / boot_a - 1, [0.025, 0.975])
        out.update(ci95=[float(lo), float(hi)], rel_ci95=[float(rlo), float(rhi)])
    return out


def f1_per_class(gold: Sequence[int], pred: Sequence[int], k: int) -> list[float]:
    """F1 of each of ``k`` classes, ``2 TP / (2 TP + FP + FN)``: 0 for a class never predicted (or never
    right), NaN for a class that neither a gold answer nor a prediction names. ``pred`` may hold -1 (no
    answer: a miss for its gold class, a false alarm for none)."""
    return _f1(np.asarray(gold)[None], np.asarray(pred)[None], k)[0].tolist()


def _f1(gold: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """(rows, k) per-class F1 of each row of (rows, n) gold and predicted class indices."""
    g = gold[..., None] == np.arange(k)  # (rows, n, k)
    p = pred[..., None] == np.arange(k)
    tp, fp, fn = (g & p).sum(1), (~g & p).sum(1), (g & ~p).sum(1)
    denom = 2 * tp + fp + fn
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), np.nan)


def _macro(f1: np.ndarray) -> np.ndarray:
    """Mean over the classes that have an F1 (sklearn's ``f1_score(average="macro")`` with its default labels:
    the classes in the gold answers or the predictions)."""
    present = ~np.isnan(f1)
    return np.where(present, f1, 0.0).sum(-1) / np.maximum(present.sum(-1), 1)


def macro_f1(gold: Sequence[int], pred: Sequence[int], k: int) -> float:
    """Macro-averaged F1 over the classes (PubMedQA's second metric, next to accuracy): every class counts
    the same however rare, so always answering the majority class scores low."""
    return float(_macro(_f1(np.asarray(gold)[None], np.asarray(pred)[None], k))[0])


def _interval(value: float, boots: np.ndarray, n: int) -> dict[str, Any]:
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return {"value": value, "n": n, "stderr": float(np.std(boots, ddof=1)), "ci95": [float(lo), float(hi)]}


def class_summary(gold: Sequence[int], pred: Sequence[int], classes: Sequence[str], *, n_boot: int = 2000,
                  seed: int = 0) -> dict[str, Any]:
    """A class-labelled task's macro-F1 with a percentile-bootstrap 95 % interval over items (its standard
    error the replicates' standard deviation), each class's F1, and each class's recall (the accuracy on
    the items of that gold class, as :func:`summarize`). A class with no gold item has no recall and is
    left out of ``recall_by_class``."""
    g, p, k = np.asarray(gold), np.asarray(pred), len(classes)
    idx = np.random.default_rng(seed).integers(0, len(g), size=(n_boot, len(g)))
    f1 = f1_per_class(g, p, k)
    recall = {name: summarize((p[g == c] == c).astype(float).tolist(), seed=seed)
              for c, name in enumerate(classes) if (g == c).any()}
    return {"macro_f1": _interval(macro_f1(g, p, k), _macro(_f1(g[idx], p[idx], k)), len(g)),
            "f1_by_class": {name: (None if math.isnan(v) else v) for name, v in zip(classes, f1)},
            "recall_by_class": recall, "classes": list(classes)}


def paired_macro_f1_change(gold: Sequence[int], pred_a: Sequence[int], pred_b: Sequence[int], k: int, *,
                           n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Macro-F1 of model b minus model a on the same items, with a percentile-bootstrap 95 % interval
    (each replicate resamples items once for both models, so the pairing is kept); ``changed``: the items
    whose predicted class differs."""
    g, a, b = np.asarray(gold), np.asarray(pred_a), np.asarray(pred_b)
    if not (len(g) == len(a) == len(b)) or len(g) == 0:
        raise ValueError("a paired macro-F1 change needs the same non-empty items for both models")
    idx = np.random.default_rng(seed).integers(0, len(g), size=(n_boot, len(g)))
    boots = _macro(_f1(g[idx], b[idx], k)) - _macro(_f1(g[idx], a[idx], k))
    out = _interval(macro_f1(g, b, k) - macro_f1(g, a, k), boots, len(g))
    return {**out, "changed": int((a != b).sum())}
