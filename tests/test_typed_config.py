"""Configuration values are typed once: batching names, the detection block, the preprocessing record, backend kinds."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest
from pydantic import ValidationError

from eca_serve.api.app import serving_options
from eca_serve.batching.policy import BatchPolicy
from eca_serve.kinds import BACKEND_CHOICES, BACKEND_KINDS
from eca_serve.preprocessing import Preprocessing
from eca_serve.repository import BATCHING_FIELDS, DetectionSpec, EntryConfig, InputSpec, ServingSpec, read_config
from eca_serve.runtime import KINDS
from eca_serve.settings import Settings

MODELS = Path(__file__).resolve().parent.parent / "models"


def test_every_batching_rule_has_one_name_in_settings_serving_block_and_policy() -> None:
    policy_fields = {f.name for f in dataclasses.fields(BatchPolicy)}
    for name in BATCHING_FIELDS:
        assert name in Settings.model_fields and name in ServingSpec.model_fields and name in policy_fields, name
    settings = Settings(max_batch_size=3, timeout_s=7.0, max_inflight=9)
    assert settings.batching_defaults() == {"max_batch_size": 3, "timeout_s": 7.0, "max_inflight": 9}
    assert serving_options(settings).policy_defaults == settings.batching_defaults()


def test_the_old_timeout_name_still_works_with_a_warning(caplog: pytest.LogCaptureFixture,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    with caplog.at_level(logging.WARNING, logger="eca_serve.settings"):
        assert Settings(request_timeout_s=5.0).timeout_s == 5.0
        monkeypatch.setenv("ECA_SERVE_REQUEST_TIMEOUT_S", "6")
        assert Settings().timeout_s == 6.0
        assert Settings(timeout_s=8.0).timeout_s == 8.0  # the new name wins
    assert sum("deprecated" in r.getMessage() for r in caplog.records) == 3
    assert "request_timeout_s" not in Settings(timeout_s=8.0).model_dump()


def test_the_shipped_detection_block_loads_typed_and_writes_back_the_same_json() -> None:
    folder = MODELS / "shapes_detector" / "1"
    on_disk = json.loads((folder / "config.json").read_text())["detection"]
    config = read_config(folder, verify=False)
    assert isinstance(config.detection, DetectionSpec)
    assert (config.detection.min_size, config.detection.max_size) == (on_disk["min_size"], on_disk["max_size"])
    assert config.model_dump(mode="json")["detection"] == on_disk
    assert config.warmup_size() == tuple(on_disk["warmup_size"])


def test_the_warm_up_size_comes_from_one_place() -> None:
    classifier = read_config(MODELS / "shapes_classifier" / "1", verify=False)
    assert classifier.warmup_size() == tuple(classifier.input.size)
    detector = read_config(MODELS / "shapes_detector" / "1", verify=False)
    unsized = detector.model_copy(update={"detection": DetectionSpec(min_size=96, max_size=160)})
    assert unsized.warmup_size() == (96, 96)


def test_a_detection_block_with_a_bad_or_unknown_field_is_refused() -> None:
    with pytest.raises(ValidationError, match="min_size"):
        DetectionSpec(min_size=0, max_size=10)
    with pytest.raises(ValidationError, match="min_sise"):
        DetectionSpec.model_validate({"min_sise": 10, "max_size": 10})


def test_input_spec_is_the_preprocessing_record_plus_the_tensor_form() -> None:
    assert issubclass(InputSpec, Preprocessing) and issubclass(EntryConfig.model_fields["input"].annotation, Preprocessing)
    shipped = read_config(MODELS / "shapes_classifier" / "1", verify=False).input
    record = Preprocessing(**shipped.record())
    assert InputSpec(layout="NCHW", **record.record()) == shipped.model_copy(update={"preprocessing": None})


def test_the_models_preprocess_config_is_the_record_and_reads_older_weights_metadata() -> None:
    from eca_serve.models import PreprocessConfig

    old = {"input_size": [64, 64], "resize": 72, "crop": True, "interpolation": "bilinear",
           "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    pre = PreprocessConfig.model_validate(old)
    assert isinstance(pre, Preprocessing) and pre.input_size == pre.size == (64, 64)
    assert pre.model_dump(mode="json", by_alias=True) == old  # weights written now carry the same metadata
    assert PreprocessConfig().record()["size"] == (224, 224)
    with pytest.raises(ValidationError):
        PreprocessConfig.model_validate({**old, "interpolation": "lanczos9"})


def test_backend_kinds_are_listed_once() -> None:
    assert KINDS == BACKEND_KINDS
    assert set(Settings.model_fields["backend"].annotation.__args__) == set(BACKEND_CHOICES)
