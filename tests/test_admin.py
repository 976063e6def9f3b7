"""Run-time load/unload behind the opt-in, token-protected admin API."""

import httpx
import pytest

from eca_serve.api import create_app
from eca_serve.errors import ConfigError
from eca_serve.settings import Settings
from tests.hostile_images import png_bytes
from tests.serving_utils import export_small_classifier, running_server

PNG = {"content": png_bytes(), "headers": {"content-type": "image/png"}}


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("models")
    export_small_classifier(root)
    return root


def test_admin_endpoints_are_off_by_default(repository) -> None:
    with running_server(Settings(model_repository=repository)) as (base, _):
        response = httpx.post(f"{base}/v2/repository/models/shapes_small/unload")
        assert response.status_code == 403 and "disabled" in response.json()["error"]
        assert httpx.post(f"{base}/v1/models/shapes_small/classify", **PNG, timeout=30).status_code == 200


def test_unload_and_load_with_token(repository) -> None:
    settings = Settings(model_repository=repository, admin_enabled=True, admin_token="s3cret")
    auth = {"authorization": "Bearer s3cret"}
    with running_server(settings) as (base, _):
        client = httpx.Client(timeout=60)
        assert client.post(f"{base}/v2/repository/models/shapes_small/unload").status_code == 401
        assert client.post(f"{base}/v2/repository/models/shapes_small/unload", headers={"authorization": "Bearer nope"}).status_code == 401
        assert client.post(f"{base}/v2/repository/models/shapes_small/unload", headers=auth).json() == {"name": "shapes_small", "unloaded_versions": [1]}
        gone = client.post(f"{base}/v1/models/shapes_small/classify", **PNG)
        assert gone.status_code == 404 and "unknown model" in gone.json()["error"]
        unloaded = [{"name": "shapes_small", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"}]
        assert client.get(f"{base}/v2/repository/index").json() == unloaded
        assert client.post(f"{base}/v2/repository/index").json() == unloaded
        assert client.post(f"{base}/v2/repository/models/shapes_small/load", headers=auth).json() == {"name": "shapes_small", "loaded_versions": [1]}
        assert client.post(f"{base}/v1/models/shapes_small/classify", **PNG).status_code == 200
        assert [e["state"] for e in client.get(f"{base}/v2/repository/index").json()] == ["READY"]
        assert client.post(f"{base}/v2/repository/models/..%2F..%2Fetc/load", headers=auth).status_code == 404
        assert client.post(f"{base}/v2/repository/models/absent/load", headers=auth).status_code == 404


def test_admin_without_token_refuses_to_start(repository) -> None:
    with pytest.raises(ConfigError, match="ADMIN_TOKEN"):
        create_app(Settings(model_repository=repository, admin_enabled=True))
