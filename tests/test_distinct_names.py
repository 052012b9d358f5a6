"""One name per meaning: the data mix's temperature is not a sampling temperature, and the MMLU medical
subjects are one list in one place."""

from __future__ import annotations

from pathlib import Path

import pytest

from medtune.config import load_config
from medtune.data.adapters.mmlu import MEDICAL_MMLU_SUBJECTS, MULTIMEDQA_MMLU_SUBJECTS
from medtune.data.config import DataConfig
from medtune.errors import ConfigError
from medtune.evaluate.tasks import GROUPS

SRC = Path(__file__).resolve().parents[1] / "src" / "medtune"


def test_the_mix_temperature_is_its_own_key_and_the_old_one_is_refused(tmp_path):
    """The data config takes mix_temperature, and a bare `temperature` key is an error, not silently ignored."""
    (tmp_path / "new.yaml").write_text("mix_strategy: temperature\nmix_temperature: 1.5\n")
    assert load_config(DataConfig, tmp_path / "new.yaml").mix_temperature == 1.5
    (tmp_path / "old.yaml").write_text("mix_strategy: temperature\ntemperature: 1.5\n")
    with pytest.raises(ConfigError, match="temperature: unknown key"):
        load_config(DataConfig, tmp_path / "old.yaml")


def test_the_general_mmlu_score_drops_every_scored_medical_subject_and_three_more():
    """The mmlu_medical group scores the six MultiMedQA subjects; 'exclude_subjects: medical' drops those and
    the three other health subjects."""
    assert GROUPS["mmlu_medical"].tasks == tuple(f"mmlu_{s}" for s in MULTIMEDQA_MMLU_SUBJECTS)
    assert MEDICAL_MMLU_SUBJECTS[:6] == MULTIMEDQA_MMLU_SUBJECTS
    assert set(MEDICAL_MMLU_SUBJECTS) - set(MULTIMEDQA_MMLU_SUBJECTS) == {"nutrition", "virology", "human_aging"}


def test_the_medical_mmlu_subjects_are_written_once():
    """No module but the MMLU adapter spells out the medical subject list."""
    spelled = [p.relative_to(SRC).as_posix() for p in SRC.rglob("*.py")
               if '"clinical_knowledge", "college_biology"' in p.read_text()]
    assert spelled == ["data/adapters/mmlu.py"]
