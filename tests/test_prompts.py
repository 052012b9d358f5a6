"""Evaluation prompts equal lm-evaluation-harness's, character for character; training texts are as documented.

The expected strings below were produced by lm-evaluation-harness 0.4.13's own task code
(``preprocess_pubmedqa.doc_to_text``, ``utils_medmcqa.doc_to_text``, ``preprocess_medqa.doc_to_text``
and the ARC / MMLU Jinja templates) on the first item of each benchmark in ``../shared/data``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from medtune.data.prompts import TRAIN_TEMPLATES, eval_prompt, training_text
from medtune.data.records import QARecord
from medtune.data.registry import load_source
from medtune.data.rejects import Rejects
from medtune.data.spec import SourceConfig

FIXTURES = Path(__file__).parent / "fixtures"

LMEVAL_FIRST_ITEM = {
    'pubmedqa': "Abstract: Dyschesia can be provoked by inappropriate defecation movements. The aim of this prospective study was to demonstrate dysfunction of the anal sphincter and/or the musculus (m.) puborectalis in patients with dyschesia using anorectal endosonography.\nTwenty consecutive patients with a medical history of dyschesia and a control group of 20 healthy subjects underwent linear anorectal endosonography (Toshiba models IUV 5060 and PVL-625 RT). In both groups, the dimensions of the anal sphincter and the m. puborectalis were measured at rest, and during voluntary squeezing and straining. Statistical analysis was performed within and between the two groups.\nThe anal sphincter became paradoxically shorter and/or thicker during straining (versus the resting state) in 85% of patients but in only 35% of control subjects. Changes in sphincter length were statistically significantly different (p<0.01, chi(2) test) in patients compared with control subjects. The m. puborectalis became paradoxically shorter and/or thicker during straining in 80% of patients but in only 30% of controls. Both the changes in length and thickness of the m. puborectalis were significantly different (p<0.01, chi(2) test) in patients versus control subjects.\nQuestion: Is anorectal endosonography valuable in dyschesia?\nAnswer:",
    'medmcqa': "Question: Which of the following is not true for myelinated nerve fibers:\nChoices:\nA. Impulse through myelinated fibers is slower than non-myelinated fibers\nB. Membrane currents are generated at nodes of Ranvier\nC. Saltatory conduction of impulses is seen\nD. Local anesthesia is effective only when the nerve is not covered by myelin sheath\nAnswer:",
    'medqa': "Question: A junior orthopaedic surgery resident is completing a carpal tunnel repair with the department chairman as the attending physician. During the case, the resident inadvertently cuts a flexor tendon. The tendon is repaired without complication. The attending tells the resident that the patient will do fine, and there is no need to report this minor complication that will not harm the patient, as he does not want to make the patient worry unnecessarily. He tells the resident to leave this complication out of the operative report. Which of the following is the correct next action for the resident to take?\nA. Disclose the error to the patient and put it in the operative report\nB. Tell the attending that he cannot fail to disclose this mistake\nC. Report the physician to the ethics committee\nD. Refuse to dictate the operative report\nAnswer:",
    'arc': "Question: An astronomer observes that a planet rotates faster after a meteorite impact. Which is the most likely effect of this increase in rotation?\nAnswer:",
    'mmlu': "The following are multiple choice questions (with answers) about abstract algebra.\n\nFind the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\nA. 0\nB. 4\nC. 2\nD. 6\nAnswer:",
}

REAL_FIRST_ITEM = {
    "pubmedqa": ("pubmedqa", "pubmedqa/test_set.json", (" yes", " no", " maybe"), 0),
    "medmcqa": ("medmcqa", "medmcqa/dev.json", (" A", " B", " C", " D"), 0),
    "medqa": ("medqa", "medqa_usmle/4_options/phrases_no_exclude_test.jsonl", (" A", " B", " C", " D"), 1),
    "arc": ("arc", "general/arc/ARC-Challenge-Test.jsonl", None, None),
    "mmlu": ("mmlu", "general/mmlu/test/abstract_algebra_test.csv", (" A", " B", " C", " D"), None),
}


def first(adapter: str, path: str, root: Path) -> QARecord:
    return load_source(SourceConfig(adapter=adapter, path=path), root, Rejects())[0]


@pytest.mark.parametrize("task", sorted(REAL_FIRST_ITEM))
def test_first_real_item_prompt_equals_lm_eval(task, shared_data):
    adapter, path, conts, gold = REAL_FIRST_ITEM[task]
    record = first(adapter, path, shared_data)
    prompt = eval_prompt(record)
    assert prompt.context == LMEVAL_FIRST_ITEM[task]
    if conts is not None:
        assert prompt.continuations == conts
    if task == "arc":  # ARC scores the answer texts themselves
        assert prompt.continuations == tuple(" " + o for o in record.options)
    if gold is not None:
        assert prompt.gold == gold


def test_fixture_prompts_written_out():
    """The same templates on our own fixture items (runs without ../shared/data)."""
    cases = {
        ("medmcqa", "medmcqa/dev.json"): "Question: Which vitamin deficiency causes night blindness?\nChoices:\n"
        "A. Vitamin A\nB. Vitamin C\nC. Vitamin D\nD. Vitamin K\nAnswer:",
        ("pubmedqa", "pubmedqa/test_set.json"): "Abstract: Thirty volunteers walked ten minutes after lunch.\n"
        "Peak glucose was lower after walking.\nThe effect was modest.\n"
        "Question: Is a short walk after meals enough to control glucose spikes?\nAnswer:",
        ("medqa", "medqa/4_options/phrases_no_exclude_test.jsonl"): "Question: A 30-year-old man has a fever and a "
        "stiff neck for one day. Which test should come first?\nA. Chest radiograph\nB. Lumbar puncture\n"
        "C. Skin biopsy\nD. Colonoscopy\nAnswer:",
    }
    for (adapter, path), expected in cases.items():
        assert eval_prompt(first(adapter, path, FIXTURES)).context == expected


def _mcq(i: int, answer: int) -> QARecord:
    return QARecord(f"q{i}", "medmcqa", f"Q{i}?", None, ("w", "x", "y", "z"), answer)


def test_fewshot_prompt_joins_exemplars_with_gold_answers():
    exemplars = [_mcq(1, 2), _mcq(2, 0)]
    p = eval_prompt(_mcq(3, 1), fewshot=exemplars)
    block = "A. w\nB. x\nC. y\nD. z\n"
    assert p.context == (
        f"Question: Q1?\nChoices:\n{block}Answer: C\n\n"
        f"Question: Q2?\nChoices:\n{block}Answer: A\n\n"
        f"Question: Q3?\nChoices:\n{block}Answer:"
    )
    assert p.gold == 1


def test_mmlu_description_comes_once_before_the_exemplars():
    rec = lambda i: QARecord(f"m{i}", "mmlu", f" Q{i} ", None, ("a", "b", "c", "d"), 3, meta={"subject": "high_school_physics"})
    p = eval_prompt(rec(2), fewshot=[rec(1)])
    assert p.context.startswith("The following are multiple choice questions (with answers) about high school physics.\n\nQ1\n")
    assert p.context.count("The following") == 1
    assert p.context.endswith("Q2\nA. a\nB. b\nC. c\nD. d\nAnswer:")


def test_training_text_for_each_kind_of_item():
    t = TRAIN_TEMPLATES["qa_text"]
    pub = QARecord("1", "pubmedqa", "Does X help?", "Part one.\nPart two.", ("yes", "no", "maybe"), 1,
                   context_parts=("Part one.", "Part two."), meta={"long_answer": "X did not help."})
    assert training_text(pub, t).text == "Context: Part one.\nPart two.\nQuestion: Does X help?\nAnswer: no\nX did not help."
    mcq = QARecord("2", "medmcqa", "Which one?", None, ("a", "b", "c", "d"), 3, meta={"explanation": "Because d."})
    tt = training_text(mcq, t)
    assert tt.prompt == "Question: Which one?\nA. a\nB. b\nC. c\nD. d\nAnswer:"
    assert tt.answer == " D. d\nBecause d."
