"""Replay mixing by token share: hand-checked allocations, up/down-sampling, shares on packed blocks."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from medtune.data.mixing import STRATEGIES, Doc, allocate, general_budget, mix
from medtune.data.packing import pack
from medtune.errors import MedtuneError


def docs_of(source: str, group: str, lengths: list[int]) -> list[Doc]:
    return [Doc(source, group, [7] * n, id=f"{source}:{i}") for i, n in enumerate(lengths)]


def random_docs(source: str, group: str, total: int, rng: np.random.Generator) -> list[Doc]:
    """Documents of 50-400 tokens until ``total`` tokens (the last one may be shorter)."""
    lengths: list[int] = []
    while sum(lengths) < total:
        lengths.append(min(int(rng.integers(50, 401)), total - sum(lengths)))
    return docs_of(source, group, lengths)


def corpus(general_tokens: tuple[int, int], seed: int = 0) -> tuple[dict[str, list[Doc]], dict[str, str]]:
    """~200k domain tokens in two sources and two general sources of the given sizes."""
    rng = np.random.default_rng(seed)
    groups = {"pubmedqa": "domain", "medmcqa": "domain", "wiki": "general", "books": "general"}
    sizes = {"pubmedqa": 150_000, "medmcqa": 50_000, "wiki": general_tokens[0], "books": general_tokens[1]}
    return {s: random_docs(s, groups[s], n, rng) for s, n in sizes.items()}, groups


def ids(docs: list[Doc]) -> list[str]:
    return [d.id for d in docs]


def test_general_budget_makes_the_share_exact():
    assert general_budget(200_000, 0.2) == 50_000
    assert general_budget(200_000, 0.5) == 200_000
    assert general_budget(200_000, 0.0) == 0


def test_allocate_is_proportional_tempered_and_sums_to_the_budget():
    assert allocate(1000, {"a": 600, "b": 200}) == {"a": 750, "b": 250}
    assert allocate(1000, {"a": 900, "b": 100}, exponent=0.5) == {"a": 750, "b": 250}  # sqrt: 30 : 10
    assert allocate(10, {"a": 1, "b": 1, "c": 1}) == {"a": 4, "b": 3, "c": 3}
    assert allocate(10, {"a": 5, "b": 0}) == {"a": 10, "b": 0}


def test_fixed_share_keeps_domain_and_upsamples_small_general_sources_by_whole_passes():
    by_source = {"med": docs_of("med", "domain", [100] * 40),   # 4000 tokens
                 "a": docs_of("a", "general", [100] * 6),       # 600
                 "b": docs_of("b", "general", [50] * 4)}        # 200
    groups = {"med": "domain", "a": "general", "b": "general"}
    result = mix(by_source, groups, 0.2, "fixed_share", seed=1)
    rep = result.report
    # G = 0.2/0.8 * 4000 = 1000, split 3:1 by size
    assert rep.target_tokens == {"med": 4000, "a": 750, "b": 250}
    assert rep.tokens == {"med": 4000, "a": 750, "b": 250}
    assert rep.general_share_realised == pytest.approx(0.2)
    assert rep.passes == {"med": 1, "a": 2, "b": 2}
    assert rep.upsampled == {"med": 0, "a": 1, "b": 1}
    assert rep.epochs["a"] == pytest.approx(1.25)
    # a: 7 whole docs of 100 + 50 tokens of an 8th, the other 50 reported as cut
    assert rep.docs["a"] == 8 and rep.cut_tokens == {"med": 0, "a": 50, "b": 0}
    a_counts = Counter(d.id for d in result.docs if d.source == "a")
    assert set(a_counts) == {f"a:{i}" for i in range(6)}  # the first pass covers every document
    assert max(a_counts.values()) == 2
    assert sum(len(d.tokens) for d in result.docs if d.source == "a") == 750
    assert Counter(d.id for d in result.docs if d.source == "med") == Counter(f"med:{i}" for i in range(40))


def test_fixed_share_downsamples_large_general_source_to_a_seeded_random_subset():
    by_source = {"med": docs_of("med", "domain", [100] * 40), "a": docs_of("a", "general", [100] * 100)}
    groups = {"med": "domain", "a": "general"}
    subsets = []
    for seed in (0, 1):
        result = mix(by_source, groups, 0.2, "fixed_share", seed=seed)
        picked = [d.id for d in result.docs if d.source == "a"]
        assert len(picked) == 10 == len(set(picked))  # 1000 tokens, no document twice
        assert result.report.passes["a"] == 1 and result.report.cut_tokens["a"] == 0
        subsets.append(set(picked))
    assert subsets[0] != subsets[1]


def test_temperature_balances_both_groups_with_n_to_the_one_over_t():
    by_source = {"big": docs_of("big", "domain", [100] * 9),      # 900
                 "small": docs_of("small", "domain", [50] * 2),  # 100
                 "x": docs_of("x", "general", [100] * 4),        # 400
                 "y": docs_of("y", "general", [100] * 1)}        # 100
    groups = {"big": "domain", "small": "domain", "x": "general", "y": "general"}
    rep = mix(by_source, groups, 0.2, "temperature", seed=0, mix_temperature=2.0).report
    # domain 1000 split sqrt(900):sqrt(100) = 3:1; general 250 split sqrt(400):sqrt(100) = 2:1
    assert rep.tokens == {"big": 750, "small": 250, "x": 167, "y": 83}
    assert rep.passes == {"big": 1, "small": 3, "x": 1, "y": 1}
    assert rep.epochs["small"] == pytest.approx(2.5)
    assert rep.general_share_realised == pytest.approx(0.2)
    # T = 1 is proportional: nothing resampled
    rep1 = mix(by_source, groups, 0.2, "temperature", seed=0, mix_temperature=1.0).report
    assert rep1.tokens == {"big": 900, "small": 100, "x": 200, "y": 50}


def test_concat_takes_general_in_file_order_and_cuts_the_last_document():
    by_source = {"med": docs_of("med", "domain", [100] * 42), "a": docs_of("a", "general", [100] * 20)}
    result = mix(by_source, {"med": "domain", "a": "general"}, 0.2, "concat", seed=0)
    assert ids(result.docs) == [f"med:{i}" for i in range(42)] + [f"a:{i}" for i in range(11)]
    assert len(result.docs[-1].tokens) == 50  # G = 1050 = 10 docs + 50 tokens of the 11th
    assert result.report.cut_tokens["a"] == 50 and result.report.warnings == []


def test_small_general_text_fixed_share_upsamples_but_concat_warns_and_realises_less():
    by_source = {"med": docs_of("med", "domain", [100] * 40), "a": docs_of("a", "general", [100] * 6)}
    groups = {"med": "domain", "a": "general"}
    fixed = mix(by_source, groups, 0.2, "fixed_share", seed=0).report
    assert fixed.tokens["a"] == 1000 and fixed.passes["a"] == 2 and fixed.warnings == []
    concat = mix(by_source, groups, 0.2, "concat", seed=0)
    assert concat.report.tokens["a"] == 600 and concat.report.passes["a"] == 1
    assert concat.report.general_share_realised == pytest.approx(600 / 4600)
    assert len(concat.report.warnings) == 1 and "600 of 1000" in concat.report.warnings[0]
    assert len(set(ids(concat.docs))) == len(concat.docs)  # nothing repeated


@pytest.mark.parametrize("strategy", ["fixed_share", "temperature", "concat"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_twenty_percent_general_is_realised_on_the_packed_blocks(strategy, seed):
    by_source, groups = corpus((80_000, 30_000), seed=seed)
    result = mix(by_source, groups, 0.2, strategy, seed=seed)
    packed = pack(result.docs, block_size=512, eos_id=0, drop_tail=True)
    assert abs(packed.realised_share("general") - 0.2) <= 0.01
    assert result.report.warnings == []


@pytest.mark.parametrize("strategy", ["fixed_share", "temperature"])
def test_twenty_percent_is_reached_by_upsampling_when_general_text_is_small(strategy):
    by_source, groups = corpus((6_000, 4_000))
    result = mix(by_source, groups, 0.2, strategy, seed=3)
    assert abs(pack(result.docs, 512, 0, drop_tail=True).realised_share("general") - 0.2) <= 0.01
    assert min(result.report.passes[s] for s in ("wiki", "books")) >= 5


def test_concat_cannot_reach_twenty_percent_from_small_general_text():
    by_source, groups = corpus((6_000, 4_000))
    result = mix(by_source, groups, 0.2, "concat", seed=3)
    assert pack(result.docs, 512, 0, drop_tail=True).realised_share("general") < 0.06
    assert result.report.warnings


@pytest.mark.parametrize("strategy", ["fixed_share", "temperature"])
def test_same_seed_same_mix_and_other_seed_other_order(strategy):
    by_source, groups = corpus((80_000, 30_000))
    a = mix(by_source, groups, 0.2, strategy, seed=5)
    b = mix(by_source, groups, 0.2, strategy, seed=5)
    c = mix(by_source, groups, 0.2, strategy, seed=6)
    assert a.docs == b.docs and a.report == b.report
    assert ids(a.docs) != ids(c.docs)
    # shuffled: the first 200 documents are not all from one source
    assert len({d.source for d in a.docs[:200]}) == 4


def test_share_zero_adds_no_general_docs():
    by_source, groups = corpus((80_000, 30_000))
    for strategy in STRATEGIES:
        result = mix(by_source, groups, 0.0, strategy, seed=0)
        assert all(d.group == "domain" for d in result.docs)
        assert result.report.general_share_realised == 0.0


@pytest.mark.parametrize("share", [1.5, -0.1])
def test_share_outside_zero_one_is_an_error(share):
    by_source, groups = corpus((1_000, 1_000))
    with pytest.raises(MedtuneError, match="general_share must be in"):
        mix(by_source, groups, share, "fixed_share", seed=0)


def test_unknown_strategy_lists_the_valid_names():
    with pytest.raises(MedtuneError, match="fixed_share, temperature, concat"):
        mix({}, {}, 0.2, "uniform", seed=0)


def test_missing_general_text_for_a_resampling_strategy_is_an_error():
    by_source = {"med": docs_of("med", "domain", [100] * 4), "a": []}
    with pytest.raises(MedtuneError, match="general sources are empty"):
        mix(by_source, {"med": "domain", "a": "general"}, 0.2, "fixed_share", seed=0)


def test_document_group_must_match_its_source_group():
    by_source = {"med": docs_of("med", "general", [100])}
    with pytest.raises(MedtuneError, match="labelled"):
        mix(by_source, {"med": "domain"}, 0.2, "fixed_share", seed=0)
