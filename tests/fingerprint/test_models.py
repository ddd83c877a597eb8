"""The Fingerprint document: JSON round trip, schema version, validation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stages.errors import BadInputError, SchemaVersionError
from stages.fingerprint.models import CaseFingerprint, Fingerprint
from stages.plan.models import IntensityStats


def _fp(intensity_mean=5.0):
    stats = IntensityStats(mean=intensity_mean, sd=1.0, median=5.0, mn=0.0, mx=9.0, percentile_99_5=8.9,
                           percentile_00_5=0.1)
    cases = [
        CaseFingerprint(case_id=f"c{i}", shape_before_crop=[10, 11, 12], shape_after_crop=[9, 10, 11],
                        spacing=[3.0, 0.5, 0.5], size_reduction=990 / 1320, classes=[-1, 0, 1],
                        intensity={0: stats})
        for i in range(3)
    ]
    return Fingerprint(dataset_name="x", modalities={0: "CT"}, all_classes=[1], cases=cases,
                       intensity_properties={0: stats})


def test_round_trip(tmp_path):
    fp = _fp()
    path = fp.save(tmp_path / "fingerprint.json")
    loaded = Fingerprint.load(path)
    assert loaded == fp
    assert loaded.schema_version == Fingerprint.SCHEMA_VERSION
    assert loaded.modalities == {0: "CT"}  # int keys survive JSON
    assert loaded.all_spacings == [[3.0, 0.5, 0.5]] * 3 and loaded.all_sizes == [[9, 10, 11]] * 3
    assert loaded.size_reductions == {"c0": 0.75, "c1": 0.75, "c2": 0.75}


def test_nan_statistics_survive_as_valid_json(tmp_path):
    fp = _fp(intensity_mean=float("nan"))
    text = fp.to_json()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert np.isnan(Fingerprint.from_json(text).intensity_properties[0].mean)


def test_schema_version_mismatch(tmp_path):
    raw = json.loads(_fp().to_json())
    raw["schema_version"] = Fingerprint.SCHEMA_VERSION + 1
    with pytest.raises(SchemaVersionError, match="fingerprint schema_version"):
        Fingerprint.from_json(json.dumps(raw), source="f.json")
    del raw["schema_version"]
    with pytest.raises(SchemaVersionError):
        Fingerprint.from_json(json.dumps(raw))


def test_invalid_fingerprints():
    raw = json.loads(_fp().to_json())
    for mutate in (lambda r: r.update(cases=[]),
                   lambda r: r["cases"][1].update(case_id="c0"),
                   lambda r: r["cases"][2].update(spacing=[1.0, 1.0])):
        bad = json.loads(json.dumps(raw))
        mutate(bad)
        with pytest.raises(BadInputError, match="invalid fingerprint"):
            Fingerprint.from_json(json.dumps(bad))
