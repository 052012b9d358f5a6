"""``medtune eval``: score a model (base, base + adapter, or merged) on the registered tasks.

Writes ``results.json`` (per task: accuracy with n, standard error and a bootstrap 95 % interval,
per-subject breakdowns, timings) and ``predictions.jsonl`` (per item: id, gold, predicted, the
choice log-likelihoods), plus the resolved config and the prompt templates used.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Literal, TypeVar

from pydantic import Field

from medtune import outdir
from medtune.config import ConfigFile, ModelConfig
from medtune.data.spec import SourceConfig
from medtune.evaluate.settings import TaskSettings
from medtune.evaluate.tasks import GROUPS, Task, get_task
from medtune.placement import Placed


class EvalConfig(TaskSettings, ConfigFile, Placed):
    """What to evaluate, on which tasks, and how (the task settings are the study's too: TaskSettings)."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    """The model to score."""
    adapter: str | None = None
    """A LoRA adapter directory to apply on top of the model (checked against it before scoring, then merged
    into the weights: the same model up to float rounding, scored faster)."""
    task_sources: dict[str, SourceConfig] = Field(default_factory=dict)
    """Per task, a different source for the evaluated split (e.g. a Hub dataset)."""
    mode: Literal["loglikelihood", "generate"] = "loglikelihood"
    """loglikelihood: lm-eval's multiple-choice scoring (comparable to leaderboards); generate: greedy
    decoding plus answer extraction (comparable to LMFlow's medical numbers; unparsed outputs are counted)."""
    gen_batch_size: int = Field(8, ge=1)
    """generate mode: prompts decoded together."""
    fewshot: int = Field(0, ge=0)
    """Few-shot exemplars per prompt: the first k items of the task's exemplar split, the same for every question."""
    ppl_window: int = Field(1024, ge=16)
    """Perplexity: tokens per sliding window."""
    out: str = "runs/eval"
    """Output directory for results.json and predictions.jsonl."""
    progress: bool = True
    """Show progress bars."""
    resume: bool = False
    """Continue an interrupted evaluation in ``out``: the tasks it finished (kept in ``out/partial/`` until
    results.json is written) are reused when the settings and the model's weight files are the same."""

    def root(self) -> Path:
        """``data_root`` by the one relative-path rule."""
        return self.resolve(self.data_root)


T = TypeVar("T")
R = TypeVar("R")


def parallel_map(items: Sequence[T], fn: Callable[[Sequence[T]], list[R]]) -> list[R]:
    """Run ``fn`` on this process's shard of ``items`` and gather every shard, in order.

    One process: ``fn(items)``. Under ``accelerate launch`` with N processes, rank k takes items
    k, k+N, ...; the results are gathered on every rank with accelerate's ``gather_object``.
    """
    from medtune.distributed import state as dist_state

    state = dist_state()
    if state.num_processes == 1:
        return fn(items)
    from accelerate.utils import gather_object

    idx = list(range(state.process_index, len(items), state.num_processes))
    part = fn([items[i] for i in idx])
    pairs = gather_object(list(zip(idx, part)))
    return [v for _, v in sorted(pairs, key=lambda p: p[0])]


def _load(task: Task, cfg: EvalConfig, fewshot: bool = False) -> list[Any]:
    from medtune.data.registry import load_source
    from medtune.data.rejects import Rejects
    from medtune.errors import ConfigError

    spec = task.fewshot_source if fewshot else task.source
    if fewshot and spec is None:
        raise ConfigError(f"task {task.name} has no few-shot exemplar split here; use fewshot: 0")
    src = cfg.task_sources.get(task.name) if not fewshot else None
    src = src or SourceConfig.model_validate(spec)
    return load_source(src, cfg.root(), Rejects())


def _ppl_sources(task: Task, cfg: EvalConfig) -> list[SourceConfig]:
    """A perplexity task's sources: its own, or the one ``task_sources`` gives it."""
    if task.name in cfg.task_sources:
        return [cfg.task_sources[task.name]]
    return [SourceConfig.model_validate(s) for s in (task.source, *task.extra_sources)]


def _ppl_docs(task: Task, cfg: EvalConfig) -> list[tuple[str, str]]:
    """(id, text) of a perplexity task's documents: its sources' documents interleaved (one of each in turn), so
    a token limit keeps every source; a ``task_sources`` entry replaces all of them. A QA record's text is its
    own prose: the context (PubMedQA abstract) and the long answer or explanation, where it has them."""
    from medtune.data.registry import load_source
    from medtune.data.rejects import Rejects

    per_source = []
    for src in _ppl_sources(task, cfg):
        docs = []
        for d in load_source(src, cfg.root(), Rejects()):
            if hasattr(d, "text"):  # a text document as it is
                text = d.text
            else:
                parts = [d.context, d.meta.get("long_answer") or d.meta.get("exp")]
                text = "\n".join(p.strip() for p in parts if isinstance(p, str) and p.strip())
            if text:
                docs.append((f"{src.label}:{d.id}", text))
        per_source.append(docs)
    return [d for round_ in itertools.zip_longest(*per_source) for d in round_ if d is not None]


Only = Mapping[str, Collection[str]]
"""Task -> the item ids to score (a search's subsample); a task left out is not scored."""


def _only(items: list[T], ids: Callable[[T], str], task: Task, only: Only | None) -> list[T]:
    return items if only is None else [x for x in items if ids(x) in only[task.name]]


def _mc_task(task: Task, cfg: EvalConfig, tokenizer: Any, scorer: Any,
             only: Only | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from medtune.data.prompts import eval_prompt, get_eval_template
    from medtune.evaluate import metrics
    from medtune.evaluate.requests import build_request

    template = get_eval_template(task.template) if task.template else None
    records = _only(_load(task, cfg)[: cfg.limit], lambda r: r.id, task, only)
    shots = _load(task, cfg, fewshot=True) if cfg.fewshot else []

    def exemplars(r: Any) -> list[Any]:
        if not shots:
            return []
        if task.group_by:  # per-subject exemplars, as lm-eval's per-subject MMLU tasks
            return [s for s in shots if s.meta.get(task.group_by) == r.meta.get(task.group_by)][: cfg.fewshot]
        return shots[: cfg.fewshot]

    groups = [str(r.meta.get(task.group_by, "")) if task.group_by else "" for r in records]
    prompts = [eval_prompt(r, template, fewshot=exemplars(r)) for r in records]
    requests = [build_request(tokenizer, pr, g) for pr, g in zip(prompts, groups)]
    started = time.perf_counter()
    if cfg.fewshot and task.group_by:  # each group shares its own exemplar prefix
        lls: list[list[float]] = [[] for _ in requests]
        for g in sorted(set(groups)):
            idx = [i for i, x in enumerate(groups) if x == g]
            sub = parallel_map([requests[i] for i in idx],
                               lambda rs, g=g: scorer.loglikelihoods(rs, progress=cfg.progress, desc=f"{task.name}/{g}"))
            for i, v in zip(idx, sub):
                lls[i] = v
    else:
        lls = parallel_map(requests, lambda rs: scorer.loglikelihoods(rs, progress=cfg.progress, desc=task.name))
    seconds = time.perf_counter() - started
    preds = [metrics.predict(ll) for ll in lls]
    preds_norm = [metrics.predict_norm(ll, r.choice_chars) for ll, r in zip(lls, requests)]
    acc = [float(p == r.gold) for p, r in zip(preds, requests)]
    result: dict[str, Any] = {"acc": metrics.summarize(acc)}
    if "acc_norm" in task.metrics:
        result["acc_norm"] = metrics.summarize([float(p == r.gold) for p, r in zip(preds_norm, requests)])
    if task.group_by:
        result[f"acc_by_{task.group_by}"] = metrics.by_group(acc, groups)
    if task.classes and requests:
        result.update(metrics.class_summary([r.gold for r in requests], preds, task.classes))
    result.update({"n": len(requests), "fewshot": cfg.fewshot, "seconds": round(seconds, 2),
                   "items_per_s": round(len(requests) / seconds, 2) if seconds else None, "domain": task.domain})
    # "answer": the predicted choice as the model said it ("yes", "B"), for a person reading the answer spread
    rows = [{"task": task.name, "id": r.id, "gold": r.gold, "pred": p, "pred_norm": pn, "answer": pr.continuations[p].strip(),
             "loglikelihoods": ll, **({task.group_by: r.group} if task.group_by else {})}
            for r, pr, p, pn, ll in zip(requests, prompts, preds, preds_norm, lls)]
    return result, rows


def _gen_task(task: Task, cfg: EvalConfig, tokenizer: Any, model: Any,
              only: Only | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from medtune.data.prompts import eval_prompt, get_eval_template, template_for
    from medtune.evaluate import metrics
    from medtune.evaluate.generate import extract_answer, greedy_outputs

    template = get_eval_template(task.template) if task.template else None
    records = _only(_load(task, cfg)[: cfg.limit], lambda r: r.id, task, only)
    shots = _load(task, cfg, fewshot=True)[: cfg.fewshot] if cfg.fewshot else []
    contexts = [eval_prompt(r, template, fewshot=shots).context for r in records]
    templated = cfg.chat_template is True or (isinstance(cfg.chat_template, list) and task.name in cfg.chat_template)
    if templated:
        contexts = [tokenizer.apply_chat_template([{"role": "user", "content": c}], add_generation_prompt=True, tokenize=False)
                    for c in contexts]
    started = time.perf_counter()
    outputs = parallel_map(contexts, lambda cs: greedy_outputs(model, tokenizer, cs, max_new_tokens=cfg.max_new_tokens,
                                                               batch_size=cfg.gen_batch_size, progress=cfg.progress,
                                                               desc=task.name, templated=templated))
    seconds = time.perf_counter() - started
    preds = [extract_answer(o, r, (template or template_for(r)).choices == "labels") for o, r in zip(outputs, records)]
    correct = [float(p == r.answer) for p, r in zip(preds, records)]
    parsed = [c for c, p in zip(correct, preds) if p is not None]
    classes = metrics.class_summary([r.answer for r in records], [-1 if p is None else p for p in preds],
                                    task.classes) if task.classes and records else {}
    result = {"acc": metrics.summarize(correct), "unparsed": sum(p is None for p in preds),
              "acc_parsed": metrics.summarize(parsed) if parsed else None, "n": len(records), "mode": "generate",
              "max_new_tokens": cfg.max_new_tokens, "fewshot": cfg.fewshot, "seconds": round(seconds, 2),
              "items_per_s": round(len(records) / seconds, 2) if seconds else None, "domain": task.domain,
              **classes}
    rows = [{"task": task.name, "id": r.id, "gold": r.answer, "pred": p, "output": o}
            for r, p, o in zip(records, preds, outputs)]
    return result, rows


def _ppl_task(task: Task, cfg: EvalConfig, tokenizer: Any, model: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Perplexity over the task's documents as one token stream; per-document sums go to the predictions, for
    paired comparisons between models over documents."""
    import numpy as np

    from medtune.evaluate import metrics
    from medtune.evaluate.perplexity import document_nll, scored_tokens, sliding_window_nll, token_documents, token_stream

    docs = _ppl_docs(task, cfg)[: cfg.limit]
    texts = [t for _, t in docs]
    ids = token_stream(tokenizer, texts, cfg.ppl_max_tokens)
    if scored_tokens(len(ids)) == 0:  # before any results are written: a perplexity of nothing is no number
        raise _nothing_to_score(task, cfg, len(docs), len(ids))
    window = min(cfg.ppl_window, getattr(model.config, "max_position_embeddings", cfg.ppl_window))
    started = time.perf_counter()
    res = sliding_window_nll(model, ids, window=window, stride=min(cfg.ppl_stride, window), progress=cfg.progress)
    seconds = time.perf_counter() - started
    # Bootstrap over windows: resample windows, recompute exp(total nll / total tokens).
    rng = np.random.default_rng(0)
    nll, cnt = np.asarray(res.window_nll), np.asarray(res.window_tokens)
    idx = rng.integers(0, len(nll), size=(2000, len(nll)))
    boots = np.exp(nll[idx].sum(1) / cnt[idx].sum(1))
    lo, hi = np.quantile(boots, [0.025, 0.975])
    doc_nll, doc_tokens = document_nll(res, token_documents(tokenizer, texts, len(ids)), len(docs))
    rows = [{"task": task.name, "id": doc_id, "nll": v, "tokens": n}
            for (doc_id, _), v, n in zip(docs, doc_nll, doc_tokens) if n]
    result = {"perplexity": {"value": metrics.perplexity(res.nll_sum, res.tokens), "n": res.tokens, "ci95": [float(lo), float(hi)]},
              "tokens": res.tokens, "documents": len(rows), "window": window, "stride": min(cfg.ppl_stride, window),
              "seconds": round(seconds, 2), "tokens_per_s": round(res.tokens / seconds, 1) if seconds else None,
              "domain": task.domain}
    return result, rows


def _nothing_to_score(task: Task, cfg: EvalConfig, n_docs: int, n_ids: int) -> Exception:
    from medtune.data.registry import resolve_path
    from medtune.errors import DataError

    where = ", ".join(str(resolve_path(s, cfg.root()) or s.hub) for s in _ppl_sources(task, cfg))
    what = (f"its {n_docs} document(s) hold {n_ids} token(s) in all, and the first token is never scored (it has no "
            "context): give at least 2 tokens of text") if n_docs else "none of its documents has any text"
    return DataError(where, None, None, f"perplexity task {task.name} scores 0 tokens: {what}")


class FinishedTasks:
    """Each task an evaluation has scored, kept in ``folder`` (``out/partial/``, one JSON file per task) until
    results.json is written, so that an interrupted evaluation (``resume``) scores only the tasks it had not
    finished: a long test evaluation stopped in its last task loses that task, not the hours before it.

    A kept task is reused only under the same ``key`` (:func:`resume_key`: every setting that decides the
    scores, the base model's weight files and the adapter's weights by content), so a changed setting or a
    retrained adapter scores it again. lm-eval has no resume to reuse (its ``--use_cache``
    keeps single requests in a SQLite file keyed by request, for a model it cannot tell apart from a retrained
    one at the same path)."""

    def __init__(self, folder: Path, key: str, reuse: bool, writer: bool = True) -> None:
        import shutil

        self.folder, self.key, self.writer = folder, key, writer
        if not reuse and writer and folder.exists():
            shutil.rmtree(folder)  # a fresh run: nothing of an earlier one is reused

    def get(self, task: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        import json

        path = self.folder / f"{task}.json"
        if not path.exists():
            return None
        kept = json.loads(path.read_text(encoding="utf-8"))
        return (kept["result"], kept["rows"]) if kept.get("key") == self.key else None

    def put(self, task: str, result: dict[str, Any], rows: list[dict[str, Any]]) -> None:
        import json

        from medtune import atomic

        if self.writer:  # data-parallel scoring: every rank holds the gathered results; the main one keeps them
            # as scored (results.json, written at the end, is where a non-finite score is refused)
            atomic.write_text(self.folder / f"{task}.json", json.dumps({"key": self.key, "result": result, "rows": rows}))

    def clear(self) -> None:
        import shutil

        if self.writer and self.folder.exists():
            shutil.rmtree(self.folder)


def resume_key(cfg: EvalConfig) -> str:
    """What a kept task's scores depend on: the settings (where they are written and how progress shows
    left out), the base model (:func:`medtune.weights_hash.model_identity`: file names, sizes and mtimes; the
    built-in model's GGUF file, not its rebuildable cache) and the adapter's (or tuned model's) weights by
    content (:func:`medtune.weights_hash.identity`; training's record spares reading them)."""
    import hashlib
    import json

    from medtune import weights_hash

    settings = cfg.model_dump(mode="json", exclude={"progress", "resume", "device", "out"})
    weights = {"model": weights_hash.model_identity(cfg.model.spec)}
    if cfg.adapter is not None and Path(cfg.adapter).is_dir():
        weights["adapter"] = weights_hash.identity(Path(cfg.adapter))
    return hashlib.sha256(json.dumps([settings, weights], sort_keys=True).encode()).hexdigest()


def score_model(model: Any, tokenizer: Any, cfg: EvalConfig, only: Only | None = None,
                finished: FinishedTasks | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score an already loaded model on ``cfg``'s tasks: (results per task, per-item predictions);
    ``only``: just these items of these tasks (a search's subsample); ``finished``: tasks scored before
    are taken from it, and each task scored here is put in it."""
    from medtune.evaluate.scorer import Scorer

    tasks = [get_task(n) for n in cfg.task_names if only is None or only.get(n)]
    scorer = Scorer(model, token_budget=cfg.token_budget)
    results: dict[str, Any] = {}
    predictions: list[dict[str, Any]] = []
    for task in tasks:
        kept = finished.get(task.name) if finished is not None else None
        if kept is not None:
            results[task.name], rows = kept
        elif task.kind == "ppl":
            results[task.name], rows = _ppl_task(task, cfg, tokenizer, model)  # whole: see task_pool
        elif cfg.mode == "generate":
            results[task.name], rows = _gen_task(task, cfg, tokenizer, model, only)
        else:
            results[task.name], rows = _mc_task(task, cfg, tokenizer, scorer, only)
        if finished is not None and kept is None:
            finished.put(task.name, results[task.name], rows)
        predictions.extend(rows)
    return results, predictions


def task_pool(cfg: EvalConfig) -> dict[str, list[tuple[str, str]]]:
    """Per task, (item id, stratum) of every item a full evaluation scores, for a search's stratified
    subsamples: a question's stratum is its gold answer. A perplexity task is one item, :data:`WHOLE`: its
    documents share one token stream (a document's score depends on the ones before it), so it is scored
    whole, as the evaluation scores it. Item ids must be unique within a task."""
    from medtune.errors import MedtuneError

    pool: dict[str, list[tuple[str, str]]] = {}
    for task in (get_task(n) for n in cfg.task_names):
        if task.kind == "ppl":
            pool[task.name] = [(WHOLE, "")]
            continue
        pool[task.name] = [(r.id, str(r.answer)) for r in _load(task, cfg)[: cfg.limit]]
        ids = [i for i, _ in pool[task.name]]
        if len(set(ids)) != len(ids):
            raise MedtuneError(f"task {task.name}: item ids repeat; a search scores items by id")
    return pool


WHOLE = "*"
"""The one item of a perplexity task in a search's pool: the whole task."""


def group_results(groups: Sequence[str], results: dict[str, Any], predictions: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per group: its accuracy aggregated as lm-eval does (see :class:`~medtune.evaluate.tasks.TaskGroup`),
    from the per-item predictions of its tasks, plus each task's accuracy."""
    from medtune.evaluate import metrics

    correct: dict[str, list[float]] = {}
    for row in predictions:
        if "gold" in row:  # multiple-choice rows (perplexity rows hold per-document sums)
            correct.setdefault(row["task"], []).append(float(row["pred"] == row["gold"]))
    out: dict[str, Any] = {}
    for name in groups:
        group = GROUPS[name]
        missing = [t for t in group.tasks if t not in correct]
        if missing:
            raise ValueError(f"group {name}: no predictions for {', '.join(missing)}")
        out[name] = {"acc": metrics.group_summary([correct[t] for t in group.tasks], weight_by_size=group.weight_by_size),
                     "tasks": {t: results[t]["acc"]["value"] for t in group.tasks},
                     "aggregation": "size-weighted (mean over items)" if group.weight_by_size else "mean of tasks",
                     "seconds": round(sum(results[t].get("seconds", 0.0) for t in group.tasks), 2)}
    return out


@outdir.writes_into("eval")
def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Score every task; write results.json and predictions.jsonl atomically; return the results."""
    from rich.console import Console

    from medtune import atomic, models
    from medtune.config import dump_config
    from medtune.data.prompts import EVAL_TEMPLATES, template_provenance
    from medtune.distributed import state as dist_state
    from medtune.placement import load_placed

    resolved = models.resolve(cfg.model.spec, allow_pickle=cfg.model.allow_pickle)
    model, placed = load_placed(resolved, cfg.model, cfg.device)  # under a launcher: this process's GPU
    model = models.load_with_adapter(model, cfg.adapter, allow_pickle=cfg.model.allow_pickle, base=resolved,
                                     allow_other_base=cfg.model.allow_other_base)
    if cfg.adapter is not None:  # the unmerged LoRA layers cost extra matmuls at every position
        model = model.merge_and_unload()
    tokenizer = models.load_tokenizer(resolved, trust_remote_code=cfg.model.trust_remote_code)
    state = dist_state()
    out = Path(cfg.out)
    finished = FinishedTasks(out / "partial", resume_key(cfg),
                             reuse=cfg.resume, writer=state.is_main_process)
    results, predictions = score_model(model, tokenizer, cfg, finished=finished)
    groups = group_results(cfg.group_names, results, predictions)
    report = {"model": cfg.model.spec, "adapter": cfg.adapter, "mode": cfg.mode, "tasks": results,
              **({"groups": groups} if groups else {}), "processes": state.num_processes, **placed.record(), **_provenance()}
    if not state.is_main_process:
        return report
    from medtune.evaluate.records import EvalResult

    EvalResult.model_validate(report).save(out / "results.json")  # the record the study and report read
    atomic.write_jsonl(out / "predictions.jsonl", predictions)
    atomic.write_text(out / "config.yaml", dump_config(cfg))
    atomic.write_json(out / "templates.json", template_provenance(*EVAL_TEMPLATES.values()))
    finished.clear()
    _print(Console(), results, out, groups)
    return report


def _provenance() -> dict[str, Any]:
    import platform
    from importlib.metadata import version

    import torch

    return {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "packages": {p: version(p) for p in ("medtune", "torch", "transformers", "peft")}}


def _print(console: Any, results: dict[str, Any], out: Path, groups: dict[str, Any] | None = None) -> None:
    from rich.table import Table

    table = Table(title="Results", title_justify="left")
    for col in ("task", "metric", "value", "95% CI", "n", "items/s", "note"):
        table.add_column(col, justify="left" if col in ("task", "metric") else "right")
    for name, r in results.items():
        for metric in ("acc", "acc_norm", "macro_f1", "perplexity"):
            if metric in r:
                m = r[metric]
                pct = metric != "perplexity"
                fmt = (lambda v: f"{100 * v:.1f}") if pct else (lambda v: f"{v:.2f}")
                note = f"unparsed {r['unparsed']}" if "unparsed" in r else ""
                table.add_row(name, metric, fmt(m["value"]), f"{fmt(m['ci95'][0])}–{fmt(m['ci95'][1])}", str(m["n"]),
                              str(r.get("items_per_s") or r.get("tokens_per_s", "")), note)
    for name, g in (groups or {}).items():
        m = g["acc"]
        table.add_row(f"[bold]{name}[/] (group)", "acc", f"{100 * m['value']:.1f}",
                      f"{100 * m['ci95'][0]:.1f}–{100 * m['ci95'][1]:.1f}", str(m["n"]), "",
                      f"{len(g['tasks'])} tasks, {g['aggregation']}")
    console.print(table)
    console.print(f"results: {out / 'results.json'}  predictions: {out / 'predictions.jsonl'}")
