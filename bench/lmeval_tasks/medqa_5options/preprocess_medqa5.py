"""lm-eval 0.4.13 ``lm_eval/tasks/medqa/preprocess_medqa.py`` for the official 5-option files: the same
prompt, with the options read from the file's ``options`` object (A..E) instead of ``ending0..3``."""


def doc_to_text(doc) -> str:
    answers = "".join(f"{k}. {v}\n" for k, v in sorted(doc["options"].items()))
    return f"Question: {doc['question']}\n{answers}Answer:"


def doc_to_target(doc) -> int:
    return "ABCDE".index(doc["answer_idx"])
