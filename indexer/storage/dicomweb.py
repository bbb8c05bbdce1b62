"""One PACS over DICOMweb: QIDO-RS listings, WADO-RS retrieval, STOW-RS; retries, timeouts, credentials from settings."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from indexer.catalog.pacs_rows import PacsConnectionRow
from indexer.errors import IndexerError, NotFoundError
from indexer.extras import require_extra

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

log = logging.getLogger(__name__)

# PACS names end up in environment variable names and source uris: keep them plain.
PACS_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
RETRIED_STATUSES = (408, 429, 500, 502, 503, 504)
_STUDY, _SERIES, _SOP, _MODALITY, _DATE = "0020000D", "0020000E", "00080018", "00080060", "00080020"
_STUDY_INSTANCES = "00201208"  # NumberOfStudyRelatedInstances


class PacsError(IndexerError):
    """A PACS could not be reached, refused us, or answered something that is not DICOMweb."""


class PacsNotFoundError(PacsError, NotFoundError):
    """The PACS does not have what was asked for (HTTP 404)."""


class PacsUnreachableError(PacsError):
    """The PACS does not answer at its URL (down, wrong address, or a network in the way)."""


class PacsSettings(BaseSettings):
    """How medcbir talks to every PACS: timeouts, retries and how many requests at once (MEDCBIR_PACS_*)."""

    model_config = SettingsConfigDict(env_prefix="MEDCBIR_PACS_", extra="ignore")

    timeout_s: float = 30.0
    retries: int = 4
    backoff_ms: int = 500
    concurrency: int = 4


class PacsCredentials(BaseSettings):
    """One PACS's account, from MEDCBIR_PACS_<NAME>_USERNAME / _PASSWORD (or _TOKEN); never from a flag."""

    model_config = SettingsConfigDict(extra="ignore")

    username: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None

    @classmethod
    def for_pacs(cls, name: str) -> PacsCredentials:
        """The credentials of the PACS called `name`, read from the environment now."""
        return cls(_env_prefix=env_prefix(name))  # type: ignore[call-arg]


def env_prefix(name: str) -> str:
    """MEDCBIR_PACS_<NAME>_ with the name upper-cased and '-' as '_'."""
    return f"MEDCBIR_PACS_{name.upper().replace('-', '_')}_"


def check_pacs_name(name: str) -> str:
    """The name, or a PacsError saying what a name may hold."""
    if not PACS_NAME.match(name):
        raise PacsError(
            f"PACS name {name!r} must be letters, digits, '-' or '_' (at most 64), e.g. 'main-pacs'"
        )
    return name


def _first(attributes: dict[str, Any], tag: str) -> str | None:
    values = attributes.get(tag, {}).get("Value") or []
    return str(values[0]) if values else None


@dataclass(frozen=True)
class PacsInstance:
    """One instance a QIDO-RS listing found."""

    study: str
    series: str
    sop: str
    modality: str | None = None


@dataclass(frozen=True)
class StudyFilter:
    """What a sync asks the PACS for: study dates (YYYYMMDD, inclusive), modalities, or one study."""

    since: str | None = None
    until: str | None = None
    modalities: frozenset[str] = frozenset()
    study: str | None = None

    def qido(self) -> dict[str, str]:
        """Study-level QIDO-RS search filters."""
        filters: dict[str, str] = {}
        if self.study:
            filters["StudyInstanceUID"] = self.study
        if self.since or self.until:
            filters["StudyDate"] = f"{self.since or ''}-{self.until or ''}"
        return filters


@dataclass
class DicomwebPacs:
    """A connected DICOMweb client for one configured PACS (dicomweb-client over a retrying session)."""

    connection: PacsConnectionRow
    settings: PacsSettings = field(default_factory=PacsSettings)
    credentials: PacsCredentials | None = None
    _client: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        web = require_extra(
            "dicomweb_client.web", "pacs", needed_for="talking to a PACS needs dicomweb-client"
        )
        requests = require_extra("requests", "pacs")
        adapters = require_extra("requests.adapters", "pacs")
        retry = require_extra("urllib3.util.retry", "pacs")
        credentials = self.credentials or PacsCredentials.for_pacs(self.connection.name)
        session = requests.Session()
        session.verify = self.connection.verify_tls
        if credentials.token is not None:
            session.headers["Authorization"] = f"Bearer {credentials.token.get_secret_value()}"
        elif credentials.username is not None:
            password = credentials.password.get_secret_value() if credentials.password else ""
            session.auth = (credentials.username, password)
        # connect/read failures are retried here; 5xx answers by dicomweb-client's own back-off below
        transport = retry.Retry(
            total=self.settings.retries,
            connect=self.settings.retries,
            read=self.settings.retries,
            status=0,
            backoff_factor=self.settings.backoff_ms / 1000,
        )
        session.mount("http://", adapters.HTTPAdapter(max_retries=transport))
        session.mount("https://", adapters.HTTPAdapter(max_retries=transport))
        self._client = web.DICOMwebClient(
            self.connection.url.rstrip("/"),
            session=session,
            timeout=self.settings.timeout_s,
            permissive_uid=True,  # archives hold UIDs that break the rules; they are still instances
        )
        self._client.set_http_retry_params(
            retry=True,
            max_attempts=self.settings.retries + 1,
            wait_exponential_multiplier=self.settings.backoff_ms,
            retriable_error_codes=RETRIED_STATUSES,
        )

    def _call(self, what: str, method: str | Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call the client, turning every transport or protocol failure into a PacsError that says what to do."""
        requests = require_extra("requests", "pacs")
        name, url = self.connection.name, self.connection.url
        call = method if callable(method) else getattr(self._client, method)
        try:
            return call(*args, **kwargs)
        except requests.exceptions.SSLError as exc:
            raise PacsUnreachableError(
                f"PACS {name!r}: TLS verification failed at {url}; install its CA certificate "
                "(REQUESTS_CA_BUNDLE) rather than turning verification off"
            ) from exc
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            raise PacsUnreachableError(
                f"PACS {name!r} does not answer at {url} ({type(exc).__name__}): check that it is running "
                f"and the URL (`medcbir pacs test {name}`)"
            ) from exc
        except requests.exceptions.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "?"
            hint = (
                f"check MEDCBIR_PACS_{env_prefix(name)[len('MEDCBIR_PACS_') :]}USERNAME / _PASSWORD"
                if status in (401, 403)
                else "see the PACS's own log"
            )
            if status == 404:
                raise PacsNotFoundError(
                    f"PACS {name!r} answered HTTP 404 to {what}: it does not have it"
                ) from exc
            raise PacsError(f"PACS {name!r} answered HTTP {status} to {what}: {hint}") from exc
        except Exception as exc:  # garbage in the answer (bad JSON, broken multipart, not DICOM)
            if "RetryError" in type(exc).__name__:
                raise PacsError(
                    f"PACS {name!r} kept failing {what} after retries: see the PACS's own log"
                ) from exc
            raise PacsError(
                f"PACS {name!r} answered {what} with something that is not DICOMweb ({type(exc).__name__}): "
                f"is {url} its DICOMweb root (e.g. http://host:8042/dicom-web)?"
            ) from exc

    def search_studies(self, wanted: StudyFilter = StudyFilter(), *, limit: int | None = None) -> list[str]:
        """Study Instance UIDs matching the filter (all pages)."""
        return list(self.study_sizes(wanted, limit=limit))

    def study_sizes(
        self, wanted: StudyFilter = StudyFilter(), *, limit: int | None = None
    ) -> dict[str, int | None]:
        """Study Instance UID -> how many instances the PACS says it holds (None when it does not say)."""
        found = self._call(
            "a study search",
            "search_for_studies",
            search_filters=wanted.qido(),
            fields=["StudyDate", "NumberOfStudyRelatedInstances"],
            limit=limit,
            get_remaining=limit is None,
        )
        sizes: dict[str, int | None] = {}
        for study in found:
            uid, count = _first(study, _STUDY), _first(study, _STUDY_INSTANCES)
            if not uid:
                continue
            # A Study Instance UID shared by two patients is listed twice: each study once, sizes added
            size = int(count) if count and count.isdigit() else None
            if uid in sizes:
                prior = sizes[uid]
                sizes[uid] = None if prior is None or size is None else prior + size
            else:
                sizes[uid] = size
        return sizes

    def instances_of_study(
        self, study: str, modalities: frozenset[str] = frozenset()
    ) -> Iterator[PacsInstance]:
        """Every instance of a study, series by series; series of other modalities left out."""
        seen: set[str] = set()
        for series in self._call("a series search", "search_for_series", study, get_remaining=True):
            series_uid, modality = _first(series, _SERIES), _first(series, _MODALITY)
            if (
                not series_uid
                or series_uid in seen
                or (modalities and (modality or "").upper() not in modalities)
            ):
                continue
            seen.add(series_uid)
            listing = self._call(
                "an instance search", "search_for_instances", study, series_uid, get_remaining=True
            )
            for instance in listing:
                sop = _first(instance, _SOP)
                if sop:
                    yield PacsInstance(study, series_uid, sop, modality)

    def retrieve(self, instance: PacsInstance) -> bytes:
        """The instance's file exactly as the PACS keeps it (WADO-RS, any transfer syntax, bytes untouched)."""
        return bytes(self._call("an instance retrieval", self._retrieve_raw, instance))

    def _retrieve_raw(self, instance: PacsInstance) -> bytes:
        # dicomweb-client parses what it retrieves with pydicom, which refuses files without a preamble
        # that a PACS stores as they came: take the part's bytes through the same retrying transport.
        web = require_extra("dicomweb_client.web", "pacs")
        client = self._client
        url = client._get_instances_url(
            web._Transaction.RETRIEVE, instance.study, instance.series, instance.sop
        )
        accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
        try:
            response = client._http_get(url, headers={"Accept": accept})
        except Exception as exc:
            status = getattr(getattr(exc, "response", None), "status_code", None)
            if status == 404 and self.connection.kind == "orthanc":
                return self._orthanc_file(instance)
            raise
        if response.headers.get("Content-Type", "").startswith("application/dicom"):
            return bytes(response.content)
        parts = [part for part in client._decode_multipart_message(response, stream=False) if part]
        if len(parts) != 1:
            raise ValueError(f"{len(parts)} parts where one instance was asked for")
        return bytes(parts[0])

    def _orthanc_file(self, instance: PacsInstance) -> bytes:
        # Orthanc's WADO-RS answers 404 for a SOP Instance UID it holds more than once (two patients
        # reusing it); its own REST API finds each copy by all three UIDs.
        session = self._client._session
        root = self.connection.url.rstrip("/").rsplit("/", 1)[0]
        query = {"StudyInstanceUID": instance.study, "SeriesInstanceUID": instance.series}
        query["SOPInstanceUID"] = instance.sop
        timeout = self.settings.timeout_s
        found = session.post(
            f"{root}/tools/find", json={"Level": "Instance", "Query": query}, timeout=timeout
        )
        found.raise_for_status()
        ids = found.json()
        if not ids:
            found.status_code = 404
            found.raise_for_status()
        answer = session.get(f"{root}/instances/{ids[0]}/file", timeout=timeout)
        answer.raise_for_status()
        return bytes(answer.content)

    def store(self, datasets: list[Dataset]) -> None:
        """Store data sets in the PACS (STOW-RS)."""
        self._call("a STOW-RS store", "store_instances", datasets)

    @property
    def orthanc_root(self) -> str:
        """The Orthanc REST root: the DICOMweb root without its last segment (`.../dicom-web`)."""
        return self.connection.url.rstrip("/").rsplit("/", 1)[0]

    def orthanc_get(self, path: str, **params: Any) -> Any:
        """GET an Orthanc REST resource (JSON), with the same account, retries and errors as DICOMweb."""

        def get() -> Any:
            answer = self._client._session.get(
                f"{self.orthanc_root}{path}", params=params, timeout=self.settings.timeout_s
            )
            answer.raise_for_status()
            return answer.json()

        return self._call(f"GET {path.split('?')[0]}", get)

    def reachable_studies(self) -> int:
        """How many studies one QIDO-RS query sees (at most 1000): the `pacs test` probe."""
        return len(self.search_studies(limit=1000))
