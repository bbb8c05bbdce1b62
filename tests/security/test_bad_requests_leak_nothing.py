"""Bad requests carrying a password, report text and credentials: clean 4xx answers that echo none of it,
and a server log (uvicorn's access and error logs included) that holds none of it either."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.security.conftest import CANARY_REPORT, SecuredApi

CANARY_PASSWORD = "Canary-Password-wombat-5521"
CANARY_NOTE = "Canary note text: axolotl-harpsichord"
CANARY_TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJjYW5hcnkifQ.canarysignature0000"


def _json_body(text: str) -> bytes:
    """A JSON object text as bytes, escapes kept (json.dumps would refuse a lone surrogate)."""
    return text.encode("utf-8")


def test_bad_requests_echo_no_values_and_the_logs_hold_no_secrets(secured_api: SecuredApi) -> None:
    api = secured_api
    api.logs.attach()  # other servers of the session re-configure uvicorn's loggers (levels, handlers)
    admin = {**api.headers("admin"), "content-type": "application/json"}
    radiologist = api.headers("radiologist")
    first_line = len(api.logs.lines)
    answers: list[httpx.Response] = []

    def send(method: str, path: str, **kwargs: Any) -> httpx.Response:
        answer = httpx.request(method, f"{api.url}{path}", timeout=60, **kwargs)
        answers.append(answer)
        return answer

    # No username: FastAPI's own answer would echo the whole body (password included) as `input`.
    body = {"password": CANARY_PASSWORD, "role": "radiologist", "note": CANARY_NOTE}
    answer = send("POST", "/users", content=json.dumps(body), headers=admin)
    assert answer.status_code == 422, answer.text
    assert answer.json()["errors"] == [
        {"loc": ["body", "username"], "msg": "Field required", "type": "missing"}
    ]
    # Lone surrogates (valid JSON, not text) in a password and in report text: 422, not a 500.
    surrogate_user = '{"username": "sec-surrogate", "password": "%s\\ud800", "role": "radiologist"}'
    answer = send("POST", "/users", content=_json_body(surrogate_user % CANARY_PASSWORD), headers=admin)
    assert answer.status_code == 422 and "surrogate" in answer.json()["detail"], answer.text
    surrogate_report = '{"report": "' + CANARY_NOTE + ' \\udfff"}'
    answer = send("PATCH", "/cases/1", content=_json_body(surrogate_report), headers=admin)
    assert answer.status_code == 422 and "surrogate" in answer.json()["detail"], answer.text
    # A body that is not an object, holding report text.
    answer = send("PATCH", "/cases/1", json=[CANARY_NOTE, CANARY_REPORT], headers=radiologist)
    assert answer.status_code == 422
    # k=0: the same {"detail": text} shape as every other 4xx, saying where.
    query = {"file": ("q.dcm", api.files[0].read_bytes())}
    answer = send("POST", "/search", files=query, data={"k": "0"}, headers=radiologist)
    assert answer.status_code == 422 and answer.json()["detail"].startswith("body.k: "), answer.text
    # Credentials in the URL are refused, and logged with their values redacted.
    answer = send("GET", f"/cases?limit=5&api_key={api.service_key}&token={CANARY_TOKEN}")
    assert answer.status_code == 401
    # The sign-in form with a password and no username.
    answer = send("POST", "/token", data={"password": CANARY_PASSWORD})
    assert answer.status_code == 422 and isinstance(answer.json()["detail"], str)

    secrets = (CANARY_PASSWORD, CANARY_NOTE, CANARY_REPORT, CANARY_TOKEN, api.service_key)
    for answer in answers:
        assert 400 <= answer.status_code < 500, answer.text
        assert isinstance(answer.json()["detail"], str)
        assert all("input" not in problem for problem in answer.json().get("errors") or [])
        assert not [s for s in secrets if s in answer.text], answer.text
    logs = "\n".join(api.logs.lines[first_line:])
    assert "GET /cases?limit=[redacted]&api_key=[redacted]&token=[redacted]" in logs  # it was logged
    assert not [s for s in secrets if s in logs], logs
