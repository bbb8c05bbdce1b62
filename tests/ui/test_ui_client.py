"""ApiClient against a real HTTP server speaking the API contract: parsing, URLs and error mapping."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from ui.client import ApiClient, ApiError
from ui.settings import DEFAULT_API_URL, load_settings

if TYPE_CHECKING:
    from tests.ui.conftest import ContractApi

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_health_parses(contract: ContractApi) -> None:
    with ApiClient(contract.url) as client:
        health = client.health()
    assert health.encoder == "fake-encoder"
    assert health.index_size == 1234
    assert health.modalities == ["CT", "MR"]


def test_search_sends_bytes_k_and_modality(contract: ContractApi, png_bytes: bytes) -> None:
    data = png_bytes
    with ApiClient(contract.url + "/") as client:
        result = client.search(data, "scan.png", k=3, modality="CT")
    assert [h.rank for h in result.hits] == [1, 2, 3]
    assert result.prediction.label == "pneumonia"
    call = contract.searches[-1]
    assert (call.filename, call.data, call.k, call.modality) == ("scan.png", data, 3, "CT")


def test_search_without_modality_sends_none(contract: ContractApi, png_bytes: bytes) -> None:
    with ApiClient(contract.url) as client:
        client.search(png_bytes, "scan", k=1)
    assert contract.searches[-1].modality is None


@pytest.mark.parametrize(("kind", "status"), [("unsupported", 415), ("undecodable", 422)])
def test_search_error_carries_detail(contract: ContractApi, kind: str, status: int) -> None:
    prefix: bytes = getattr(contract, f"{kind}_prefix")
    detail: str = getattr(contract, f"{kind}_detail")
    with ApiClient(contract.url) as client, pytest.raises(ApiError) as info:
        client.search(prefix + b"...", "x.bin")
    assert info.value.status_code == status
    assert info.value.message == detail
    assert str(info.value) == detail


def test_fastapi_validation_error_is_readable(contract: ContractApi, png_bytes: bytes) -> None:
    with ApiClient(contract.url) as client, pytest.raises(ApiError) as info:
        client.search(png_bytes, "x.png", k=0)
    assert info.value.status_code == 422
    assert "k" in info.value.message
    assert "greater than or equal to 1" in info.value.message


def test_case_and_missing_case(contract: ContractApi) -> None:
    with ApiClient(contract.url) as client:
        assert client.case(201).case_key == "CASE-001"
        with pytest.raises(ApiError) as info:
            client.case(9)
    assert info.value.status_code == 404
    assert info.value.message == "No case with id 9."


def test_thumbnail_is_png_by_path_or_url(contract: ContractApi) -> None:
    with ApiClient(contract.url) as client:
        by_path = client.thumbnail("/images/100/thumbnail")
        by_url = client.thumbnail(client.absolute_url("images/101/thumbnail"))
    assert by_path.startswith(PNG_SIGNATURE)
    assert by_url.startswith(PNG_SIGNATURE)


def test_non_json_error_body(contract: ContractApi) -> None:
    with ApiClient(contract.url) as client, pytest.raises(ApiError) as info:
        client.thumbnail("/not-json")
    assert info.value.status_code == 502
    assert "proxy error" in info.value.message


def test_absolute_url_keeps_a_path_prefix() -> None:
    with ApiClient("http://host:9/medcbir/") as client:
        assert client.absolute_url("/images/3/thumbnail") == "http://host:9/medcbir/images/3/thumbnail"
        assert client.absolute_url("cases/2") == "http://host:9/medcbir/cases/2"
        assert client.absolute_url("https://cdn/x.png") == "https://cdn/x.png"


def test_unreachable_api_says_how_to_start_it(dead_api_url: str) -> None:
    with ApiClient(dead_api_url, timeout=5) as client, pytest.raises(ApiError) as info:
        client.health()
    assert info.value.status_code is None
    assert f"Cannot reach the search API at {dead_api_url}" in info.value.message
    assert "medcbir serve" in info.value.message


def test_bad_url_is_an_api_error() -> None:
    with ApiClient("ftp://nowhere") as client, pytest.raises(ApiError) as info:
        client.health()
    assert "http://" in info.value.message


def test_settings_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDCBIR_UI_API_URL", raising=False)
    assert load_settings([]).api_url == DEFAULT_API_URL
    monkeypatch.setenv("MEDCBIR_UI_API_URL", "http://env:1")
    assert load_settings(["tests/ui", "-q"]).api_url == "http://env:1"
    assert load_settings(["--api-url", "http://cli:2", "-x"]).api_url == "http://cli:2"
    assert load_settings(["--api-url=http://cli:3"]).api_url == "http://cli:3"
