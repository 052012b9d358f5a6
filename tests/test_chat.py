"""medtune chat: one-shot and piped questions, streaming, adapter interpolation."""

from __future__ import annotations

import subprocess
import sys

from medtune.chat import ChatConfig, answer, chat, load, render_prompt

from conftest import make_random_adapter


def test_one_shot_answer_streams_and_is_deterministic(tiny_llama, capsys):
    cfg = ChatConfig.model_validate({"model": {"spec": str(tiny_llama)}, "prompt": "Is aspirin an antiplatelet drug?",
                                     "max_new_tokens": 8})
    turns = chat(cfg)
    streamed = capsys.readouterr().out
    assert [t["role"] for t in turns] == ["user", "assistant"]
    assert turns[1]["content"] and turns[1]["content"] in streamed.strip()  # printed as it was generated
    assert chat(cfg)[1]["content"] == turns[1]["content"]  # greedy: the same answer again


def test_plain_transcript_without_a_chat_template(tiny_llama):
    model, tok = load(ChatConfig.model_validate({"model": {"spec": str(tiny_llama)}}))
    text = render_prompt(tok, [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"},
                               {"role": "user", "content": "Q2"}], use_template=True)
    assert text == "Question: Q1\nAnswer: A1\nQuestion: Q2\nAnswer:"


def test_alpha_zero_talks_like_the_base_model(tiny_llama, tmp_path):
    adapter = make_random_adapter(tiny_llama, tmp_path / "adapter", seed=3, std=0.5)
    turns = [{"role": "user", "content": "The heart pumps"}]
    common = {"model": {"spec": str(tiny_llama)}, "max_new_tokens": 12}
    base = ChatConfig.model_validate(common)
    at0 = ChatConfig.model_validate({**common, "adapter": str(adapter), "alpha": 0.0})
    at1 = ChatConfig.model_validate({**common, "adapter": str(adapter)})
    out = {name: answer(*load(c), c, turns, stream=False) for name, c in (("base", base), ("a0", at0), ("a1", at1))}
    assert out["a0"] == out["base"]
    assert out["a1"] != out["base"]  # the adapter changes what the model says


def test_piped_questions_until_end_of_input(tiny_llama):
    proc = subprocess.run([sys.executable, "-m", "medtune", "chat", "--model.spec", str(tiny_llama), "--max-new-tokens", "4"],
                          input="first question\n/reset\nsecond question\n", capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len([l for l in proc.stdout.splitlines() if l.strip()]) == 2  # one streamed answer per question
