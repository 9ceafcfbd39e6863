"""Detector persistence lives in the base class: scalar detectors declare only their state fields."""

from __future__ import annotations

import random

import pytest

from atalaia.drift.adwin import ADWIN
from atalaia.drift.base import ScalarDriftDetector
from atalaia.drift.page_hinkley import PageHinkley

DETECTORS = (ADWIN, PageHinkley)


@pytest.mark.parametrize("cls", DETECTORS)
def test_detectors_inherit_params_to_dict_and_from_dict(cls: type[ScalarDriftDetector]) -> None:
    assert not {"params", "to_dict", "from_dict"} & set(vars(cls)), cls.__name__
    assert cls.state_fields


@pytest.mark.parametrize("cls", DETECTORS)
def test_a_restored_detector_continues_bit_for_bit(cls: type[ScalarDriftDetector]) -> None:
    rng = random.Random(5)
    values = [rng.gauss(1.0, 0.3) for _ in range(1500)] + [rng.gauss(1.6, 0.3) for _ in range(500)]
    det = cls()
    for x in values[:1000]:
        det.update(x)
    restored = cls.from_bytes(det.to_bytes())
    assert restored.params() == det.params() == cls(**det.params()).params()
    for x in values[1000:]:
        det.update(x)
        restored.update(x)
        assert restored.drift_detected == det.drift_detected
    assert restored.to_bytes() == det.to_bytes() and det.n_detections >= 1


def test_a_state_of_another_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="not 'adwin'"):
        ADWIN.from_dict(PageHinkley().to_dict())
