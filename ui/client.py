"""Typed HTTP client of the search API: every failure becomes an ApiError a person can act on."""

from __future__ import annotations

from types import TracebackType
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from search_api.schemas import (
    AuditPage,
    CaseEditOut,
    CaseList,
    CaseOut,
    FeedbackMarkOut,
    FilterOptions,
    HealthOut,
    LogoutOut,
    MeOut,
    SearchFilters,
    SearchResponse,
    SeriesSearchResponse,
    TokenOut,
    UserOut,
)

ModelT = TypeVar("ModelT", bound=BaseModel)

START_HINT = "start it with `medcbir serve`, or point the UI elsewhere with --api-url / MEDCBIR_UI_API_URL"


class ApiError(Exception):
    """The search API could not answer: `message` is for the user; `status_code` is None without HTTP."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code

    def __str__(self) -> str:
        return self.message


def _detail_of(response: httpx.Response) -> str:
    """The human text of an error response: ErrorOut.detail, FastAPI's validation list, or the raw body."""
    try:
        body: Any = response.json()
    except ValueError:
        text = response.text.strip()
        return text[:500] if text else response.reason_phrase or f"HTTP {response.status_code}"
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, str) and detail:
        return detail
    if isinstance(detail, list):  # FastAPI's default 422: [{"loc": [...], "msg": "..."}, ...]
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", []) if p != "body")
                msg = str(item.get("msg", item))
                parts.append(f"{loc}: {msg}" if loc else msg)
            else:
                parts.append(str(item))
        if parts:
            return "; ".join(parts)
    return response.reason_phrase or f"HTTP {response.status_code}"


def _filter_form(filters: SearchFilters) -> dict[str, str]:
    """The multipart form fields of a search; filters left unset are not sent."""
    form = {"k": str(filters.k)}
    for name in ("modality", "body_part", "label"):
        value = getattr(filters, name)
        if value:
            form[name] = value
    if filters.min_similarity is not None:
        form["min_similarity"] = f"{filters.min_similarity:g}"
    if filters.group_by:
        form["group_by"] = filters.group_by
    if filters.exclude_patient:
        form["exclude_patient"] = "true"
    return form


class ApiClient:
    """Speaks to the medcbir search API over HTTP; use as a context manager or call close()."""

    def __init__(self, base_url: str, timeout: float = 60.0, token: str | None = None) -> None:
        self.base_url = base_url.strip().rstrip("/")
        self.timeout = timeout
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        # Redirects are not followed: a redirect to another host would carry the bearer token there.
        self._http = httpx.Client(timeout=timeout, follow_redirects=False, headers=headers)

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Release the connection pool."""
        self._http.close()

    def absolute_url(self, path: str) -> str:
        """Resolve a path relative to the API root (as in Hit.thumbnail_url) to a full URL; full URLs pass."""
        if path.startswith(("http://", "https://")):
            return path
        return f"{self.base_url}/{path.lstrip('/')}"

    def health(self) -> HealthOut:
        """GET /health: what the server loaded (encoder, index size, modalities)."""
        return self._parse(self._request("GET", "/health"), HealthOut)

    def search(
        self,
        data: bytes,
        filename: str,
        k: int = 10,
        modality: str | None = None,
        *,
        filters: SearchFilters | None = None,
        patient_ref: str | None = None,
        box: str | None = None,
    ) -> SearchResponse:
        """POST /search with the image bytes; the API sniffs the format from the bytes, not the name.

        `filters` (when given) carries k, modality and the other filters and wins over `k`/`modality`;
        `patient_ref` (a patient ID or P-... reference) names the query's patient for exclude_patient.
        """
        form = _filter_form(filters or SearchFilters(k=k, modality=modality or None))
        if patient_ref and patient_ref.strip():
            form["patient_ref"] = patient_ref.strip()
        if box:
            form["box"] = box  # 'x0,y0,x1,y1': search that region only
        files = {"file": (filename or "query", data, "application/octet-stream")}
        return self._parse(self._request("POST", "/search", data=form, files=files), SearchResponse)

    def search_by_image(
        self, image_id: int, filters: SearchFilters | None = None, box: str | None = None
    ) -> SearchResponse:
        """POST /search/by-image/{id}: search with an archived image's stored embedding (itself left out);
        with `box` ('x0,y0,x1,y1'), with that region of it."""
        form = _filter_form(filters or SearchFilters())
        if box:
            form["box"] = box
        return self._parse(self._request("POST", f"/search/by-image/{image_id}", data=form), SearchResponse)

    def refine(
        self,
        *,
        query_id: str | None,
        image_id: int | None,
        positive: list[int],
        negative: list[int],
        filters: SearchFilters | None = None,
        round_number: int = 1,
        patient_ref: str | None = None,
        box: str | None = None,
    ) -> SearchResponse:
        """POST /search/refine: the search again, moved towards `positive` and away from `negative`
        (every mark so far); `query_id` of an upload's answer, or the archived query's `image_id`."""
        form: dict[str, Any] = {**_filter_form(filters or SearchFilters()), "round": str(round_number)}
        if query_id:
            form["query_id"] = query_id
        elif image_id is not None:
            form["image_id"] = str(image_id)
        form["positive"] = [str(i) for i in positive]
        form["negative"] = [str(i) for i in negative]
        if box:
            form["box"] = box
        if patient_ref and patient_ref.strip():
            form["patient_ref"] = patient_ref.strip()
        return self._parse(self._request("POST", "/search/refine", data=form), SearchResponse)

    def search_series(
        self,
        files: list[tuple[str, bytes]],
        k: int = 10,
        pairs: int = 3,
        *,
        filters: SearchFilters | None = None,
        patient_ref: str | None = None,
    ) -> SeriesSearchResponse:
        """POST /search/series: the stored series most like these slices (files, a multi-frame DICOM, a zip).

        `filters` (when given) carries k and the search filters and wins over `k`; `patient_ref` names
        the query's patient for exclude_patient when the slices' headers do not.
        """
        parts = [("files", (name or "slice", data, "application/octet-stream")) for name, data in files]
        form = {**_filter_form(filters or SearchFilters(k=k)), "pairs": str(pairs)}
        if patient_ref and patient_ref.strip():
            form["patient_ref"] = patient_ref.strip()
        response = self._request("POST", "/search/series", data=form, files=parts)
        return self._parse(response, SeriesSearchResponse)

    def render(self, data: bytes, filename: str, center: float, width: float, max_side: int = 512) -> bytes:
        """POST /render: the uploaded image as a PNG with this window/level (display only)."""
        form = {"window_center": f"{center:g}", "window_width": f"{width:g}", "max_side": str(max_side)}
        files = {"file": (filename or "query", data, "application/octet-stream")}
        return self._image(self._request("POST", "/render", data=form, files=files))

    def render_image(self, image_id: int, center: float, width: float, max_side: int = 512) -> bytes:
        """GET /images/{id}/render: an archived image re-rendered with this window/level."""
        params = {"window_center": f"{center:g}", "window_width": f"{width:g}", "max_side": str(max_side)}
        return self._image(self._request("GET", f"/images/{image_id}/render", params=params))

    def explain_similarity(self, query_id: str | None, query_image_id: int | None, image_id: int) -> bytes:
        """Why `image_id` matched: GET /queries/{query_id}/similarity/{image_id} for an uploaded query,
        GET /images/{query_image_id}/similarity/{image_id} for an archived one. A PNG: query | neighbour
        with the regions that drove their similarity."""
        if query_id:
            return self._image(self._request("GET", f"/queries/{query_id}/similarity/{image_id}"))
        if query_image_id is not None:
            return self._image(self._request("GET", f"/images/{query_image_id}/similarity/{image_id}"))
        raise ApiError("This search answer names no query to explain; search again.")

    def explain_gradcam(self, query_id: str | None, query_image_id: int | None, label: str | None) -> bytes:
        """Grad-CAM of the trained head's class `label` over the query (uploaded or archived), as a PNG."""
        params = {"label": label} if label else {}
        if query_id:
            return self._image(self._request("GET", f"/queries/{query_id}/gradcam", params=params))
        if query_image_id is not None:
            return self._image(self._request("GET", f"/images/{query_image_id}/gradcam", params=params))
        raise ApiError("This search answer names no query to explain; search again.")

    def cases(self, limit: int = 50, offset: int = 0, text: str | None = None) -> CaseList:
        """GET /cases: one page of the archive's cases (matching every word of `text`), to pick a query from."""
        params = {"limit": str(limit), "offset": str(offset)}
        if text and text.strip():
            params["q"] = text.strip()
        return self._parse(self._request("GET", "/cases", params=params), CaseList)

    def filters(self) -> FilterOptions:
        """GET /filters: the modalities, body parts and labels the archive holds, and the CT presets."""
        return self._parse(self._request("GET", "/filters"), FilterOptions)

    def case(self, case_id: int) -> CaseOut:
        """GET /cases/{case_id}: the case with its report, labels and images."""
        return self._parse(self._request("GET", f"/cases/{case_id}"), CaseOut)

    def login(self, username: str, password: str) -> TokenOut:
        """POST /token (OAuth2 password flow): a bearer token for the other calls."""
        form = {"username": username, "password": password}
        return self._parse(self._request("POST", "/token", data=form), TokenOut)

    def me(self) -> MeOut:
        """GET /me: who the token belongs to (answers without a token only in development mode)."""
        return self._parse(self._request("GET", "/me"), MeOut)

    def logout(self) -> LogoutOut:
        """POST /logout: the API refuses this client's token from now on (every worker, until it expires)."""
        return self._parse(self._request("POST", "/logout"), LogoutOut)

    def add_case(
        self,
        files: list[tuple[str, bytes]],
        report: str | None,
        diagnosis: list[str],
        predicted_label: str | None = None,
    ) -> CaseOut:
        """POST /cases: a new case from images, a report and labels (searchable when it answers)."""
        form = {"diagnosis": "; ".join(diagnosis)}
        if report:
            form["report"] = report
        if predicted_label:
            form["predicted_label"] = predicted_label
        parts = [("files", (name or "image", data, "application/octet-stream")) for name, data in files]
        return self._parse(self._request("POST", "/cases", data=form, files=parts), CaseOut)

    def edit_case(
        self, case_id: int, report: str | None = None, diagnosis: list[str] | None = None
    ) -> CaseOut:
        """PATCH /cases/{id}: new report and/or diagnosis labels."""
        body: dict[str, Any] = {}
        if report is not None:
            body["report"] = report
        if diagnosis is not None:
            body["diagnosis"] = diagnosis
        return self._parse(self._request("PATCH", f"/cases/{case_id}", json=body), CaseOut)

    def save_feedback_marks(
        self, case_id: int, origin: str, positive: list[int], negative: list[int], round_number: int = 1
    ) -> list[FeedbackMarkOut]:
        """PUT /cases/{id}/feedback-marks: keep a refined search's marks with the case (replacing that search's)."""
        body = {"origin": origin, "round": round_number, "positive": positive, "negative": negative}
        response = self._request("PUT", f"/cases/{case_id}/feedback-marks", json=body)
        return [FeedbackMarkOut.model_validate(item) for item in response.json()]

    def feedback_marks(self, case_id: int) -> list[FeedbackMarkOut]:
        """GET /cases/{id}/feedback-marks: the marks saved with the case."""
        response = self._request("GET", f"/cases/{case_id}/feedback-marks")
        return [FeedbackMarkOut.model_validate(item) for item in response.json()]

    def delete_case(self, case_id: int) -> None:
        """DELETE /cases/{id} (admin)."""
        self._request("DELETE", f"/cases/{case_id}")

    def case_history(self, case_id: int) -> list[CaseEditOut]:
        """GET /cases/{id}/history: who changed what, oldest first."""
        response = self._request("GET", f"/cases/{case_id}/history")
        return [CaseEditOut.model_validate(item) for item in response.json()]

    def users(self) -> list[UserOut]:
        """GET /users (admin)."""
        return [UserOut.model_validate(item) for item in self._request("GET", "/users").json()]

    def create_user(self, username: str, password: str, role: str) -> UserOut:
        """POST /users (admin)."""
        body = {"username": username, "password": password, "role": role}
        return self._parse(self._request("POST", "/users", json=body), UserOut)

    def update_user(self, username: str, role: str | None = None, disabled: bool | None = None) -> UserOut:
        """PATCH /users/{username} (admin): role and/or disabled."""
        body: dict[str, Any] = {}
        if role is not None:
            body["role"] = role
        if disabled is not None:
            body["disabled"] = disabled
        return self._parse(self._request("PATCH", f"/users/{username}", json=body), UserOut)

    def audit(
        self, limit: int = 100, offset: int = 0, username: str | None = None, action: str | None = None
    ) -> AuditPage:
        """GET /audit (admin): the audit trail, newest first."""
        params = {"limit": str(limit), "offset": str(offset)}
        if username:
            params["username"] = username
        if action:
            params["action"] = action
        return self._parse(self._request("GET", "/audit", params=params), AuditPage)

    def thumbnail(self, path_or_url: str) -> bytes:
        """The PNG bytes behind a thumbnail URL, fetched here because the browser may not reach the API."""
        return self._image(self._request("GET", path_or_url))

    def _image(self, response: httpx.Response) -> bytes:
        content_type = response.headers.get("content-type", "")
        if not content_type.startswith("image/"):
            raise ApiError(
                f"The search API sent {content_type or 'no content type'} instead of an image "
                f"for {response.request.url}.",
                response.status_code,
            )
        return response.content

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        url = self.absolute_url(path)
        try:
            response = self._http.request(method, url, **kwargs)
        except httpx.TimeoutException as exc:
            if isinstance(exc, httpx.ConnectTimeout):
                raise ApiError(f"Cannot reach the search API at {self.base_url}: {START_HINT}.") from exc
            raise ApiError(
                f"The search API at {self.base_url} did not answer within {self.timeout:g} s; "
                "it may still be loading its model or index: try again in a moment."
            ) from exc
        except httpx.InvalidURL as exc:
            raise ApiError(f"The search API URL {self.base_url!r} is not a valid URL: {exc}.") from exc
        except httpx.UnsupportedProtocol as exc:
            raise ApiError(
                f"The search API URL {self.base_url!r} must start with http:// or https://."
            ) from exc
        except httpx.HTTPError as exc:  # connection refused, DNS failure, reset, ...
            raise ApiError(f"Cannot reach the search API at {self.base_url}: {START_HINT}.") from exc
        if response.status_code >= 400:
            raise ApiError(_detail_of(response), response.status_code)
        return response

    def _parse(self, response: httpx.Response, model: type[ModelT]) -> ModelT:
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            raise ApiError(
                f"The search API at {self.base_url} sent an answer the UI does not understand "
                f"({model.__name__}: {exc.error_count()} problem(s)); are the UI and API the same version?",
                response.status_code,
            ) from exc
