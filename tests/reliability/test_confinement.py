"""The model repository cannot be escaped: not by model names in URLs, not by paths inside a config.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest

from eca_serve.errors import ConfigError
from eca_serve.repository import read_config
from tests.reliability.served import Repository, Served

ESCAPES = ["../../etc/passwd", "/etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%2e%2e", "sub/../../x", "x\\..\\y"]


@pytest.mark.parametrize("artifact", ["../model.onnx", "/etc/passwd", "sub/model.onnx", "..", "model.onnx\x00.txt"])
def test_a_config_pointing_outside_its_folder_is_refused(repository: Repository, tmp_path: Path, artifact: str) -> None:
    entry = tmp_path / repository.classifier / "1"
    shutil.copytree(repository.root / repository.classifier / "1", entry)
    config = json.loads((entry / "config.json").read_text())
    config["artifacts"]["onnx"]["file"] = artifact
    (entry / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="artifact file"):
        read_config(entry)


@pytest.mark.parametrize("name", ESCAPES)
@pytest.mark.parametrize("route", ["/v1/models/{}", "/v1/models/{}/classify", "/v2/models/{}", "/v2/models/{}/infer"])
def test_model_names_that_try_to_leave_the_repository_get_4xx_json(server: Served, route: str, name: str) -> None:
    method = "POST" if route.endswith(("classify", "infer")) else "GET"
    response = httpx.request(method, server.base + route.format(name), content=b"{}", timeout=10,
                             headers={"Content-Type": "application/json"})
    assert 400 <= response.status_code < 500
    assert response.headers["content-type"].startswith("application/json")
    assert set(response.json()) == {"error"} and "root:x:0:0" not in response.text
