"""The study's closing lines: a paired change is called a measured gain or loss only when its interval excludes 0."""

from __future__ import annotations

from medtune.study.outcome import Change


def test_a_change_is_measured_only_when_its_interval_excludes_zero():
    gain = Change("lora", "pubmedqa", "acc", 12.0, (4.0, 20.0), 100)
    noise = Change("lora", "pubmedqa", "acc", 5.0, (-3.0, 13.0), 100)
    loss = Change("lora", "pubmedqa", "acc", -9.0, (-15.0, -2.0), 100)
    assert (gain.cleared, noise.cleared, loss.cleared) == (True, False, True)
    assert gain.verdict() == "measured gain" and loss.verdict() == "measured loss"
    assert noise.verdict() == "inside its interval: no measured change"
    assert gain.text() == "+12.0 pts [+4.0, +20.0]"
    # perplexity: lower is better, so a fall beyond its interval is a gain
    ppl = Change("lora", "ppl_medical", "ppl", -9.7, (-11.4, -7.9), 40)
    assert ppl.verdict() == "measured gain" and ppl.text() == "-9.7 % [-11.4, -7.9]"
    assert Change("lora", "ppl_general", "ppl", 3.0, (1.0, 5.0), 40).verdict() == "measured loss"
    assert Change("lora", "pubmedqa", "acc", 0.0, None, 1).verdict() == "no interval (too few items)"


def test_a_model_answering_one_choice_is_flagged_as_its_prior(tmp_path):
    import json
    from types import SimpleNamespace

    from medtune.study.outcome import priors

    golds = [0] * 11 + [1] * 9  # majority class: 55 %
    rows = []
    for label, preds in (("base", [1] * 20), ("lora", [0] * 19 + [1]), ("avg", golds[::-1])):
        path = tmp_path / f"{label}.jsonl"
        path.write_text("".join(json.dumps({"task": "pubmedqa", "id": i, "pred": p, "gold": g}) + "\n"
                                for i, (p, g) in enumerate(zip(preds, golds))))
        rows.append(SimpleNamespace(label=label, step=f"eval/{label}", predictions=path))
    found = priors(SimpleNamespace(tasks=["pubmedqa", "arc_easy"], rows=rows))
    assert [(p.model, p.choice, p.share) for p in found] == [("base", 2, 1.0), ("lora", 1, 0.95)]  # avg: 55 % #1
    assert found[1].majority == 0.55
    assert found[1].text() == ("lora answers #1 on 95 % of pubmedqa items: its accuracy there is mostly that "
                               "answer's prior (always the most frequent gold answer scores 55.0 %)")


def test_a_prior_is_named_by_the_answer_the_model_gave(tmp_path):
    """A person reads 'answers "yes" on 95 %', not a choice number, when the predictions record the answer."""
    import json
    from types import SimpleNamespace

    from medtune.study.outcome import priors

    path = tmp_path / "lora.jsonl"
    path.write_text("".join(json.dumps({"task": "pubmedqa", "id": i, "pred": 0, "gold": i % 2, "answer": "yes"}) + "\n"
                            for i in range(20)))
    found = priors(SimpleNamespace(tasks=["pubmedqa"], rows=[SimpleNamespace(label="lora", step="eval/lora", predictions=path)]))
    assert found[0].text().startswith('lora answers "yes" on 100 % of pubmedqa items')
