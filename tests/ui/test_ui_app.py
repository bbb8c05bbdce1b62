"""The search page under AppTest, against real HTTP servers: the contract API and the live engine."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from streamlit.testing.v1 import AppTest

from tests.ui.conftest import CONTRACT_HITS, CONTRACT_PASSWORD, CONTRACT_TOKEN, CONTRACT_USER
from ui.client import ApiClient

if TYPE_CHECKING:
    from tests.ui.conftest import ContractApi

APP = Path(__file__).resolve().parents[2] / "ui" / "app.py"
TIMEOUT_S = 30.0


def start_app(monkeypatch: pytest.MonkeyPatch, api_url: str, token: str | None = CONTRACT_TOKEN) -> AppTest:
    """Run the page once, pointed at `api_url` through MEDCBIR_UI_API_URL, signed in with `token`."""
    monkeypatch.setenv("MEDCBIR_UI_API_URL", api_url)
    monkeypatch.setattr(sys, "argv", ["ui/app.py"])
    at = AppTest.from_file(APP, default_timeout=TIMEOUT_S)
    if token is not None:
        at.session_state["api_token"] = token
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def upload(at: AppTest, data: bytes, name: str = "query.png") -> AppTest:
    """Upload a query through the page's file uploader and rerun."""
    at.file_uploader(key="query_file").upload(name, data)
    at.run()
    return at


def plain_texts(at: AppTest) -> list[str]:
    """Every st.text body on the page, sidebar included."""
    return [t.value for t in at.text]


def markdown_texts(at: AppTest) -> list[str]:
    """Every Markdown-rendered body: markdown, captions, titles, headers, alerts and metric labels."""
    bodies = [m.value for m in at.markdown] + [c.value for c in at.caption]
    bodies += [t.value for t in at.title] + [h.value for h in at.subheader]
    bodies += [a.value for a in (*at.error, *at.warning, *at.info, *at.success)]
    return bodies


def page_text(at: AppTest) -> str:
    """Every st.text body joined, one per line: multi-line blocks stay as they are."""
    return "\n".join(plain_texts(at))


def hit_similarities(at: AppTest) -> list[str]:
    """The similarity Markdown of each neighbour card, in page order."""
    return [m.value for m in at.markdown if "similarity" in m.value]


def test_page_shows_api_health_and_filters_in_sidebar(
    monkeypatch: pytest.MonkeyPatch, contract: ContractApi
) -> None:
    at = start_app(monkeypatch, contract.url)
    sidebar = [t.value for t in at.sidebar.text]
    assert contract.url in sidebar
    assert "Encoder: fake-encoder (16-d on cpu)" in sidebar
    assert "Index size: 1,234 vectors" in sidebar
    assert at.slider(key="k").value == 10
    assert (at.slider(key="k").min, at.slider(key="k").max) == (1, 50)
    assert at.selectbox(key="modality").options == ["any", "CT", "MR"]
    assert at.selectbox(key="modality").value == "any"
    assert at.selectbox(key="body_part").options == ["any", "CHEST", "KNEE"]
    assert at.selectbox(key="label").options == ["any", "pneumonia", "nodule"]
    assert at.slider(key="min_similarity").value == 0.0
    assert at.radio(key="group_by").value == "none"
    assert at.checkbox(key="exclude_patient").value is False
    assert any("Upload a query image" in i.value for i in at.info)
    assert not contract.searches


def test_upload_shows_query_prediction_and_neighbours(
    monkeypatch: pytest.MonkeyPatch, contract: ContractApi, png_bytes: bytes
) -> None:
    at = upload(start_app(monkeypatch, contract.url), png_bytes, "scan")  # no extension: the API decides
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error

    call = contract.searches[-1]
    assert (call.filename, call.data, call.k, call.modality) == ("scan", png_bytes, 10, None)
    assert (call.body_part, call.label, call.min_similarity, call.group_by, call.exclude_patient) == (
        None, None, None, None, False,
    )  # fmt: skip

    # The query preview and its header fields, as plain text.
    text = page_text(at)
    assert "File: scan" in text and "Body part: HAND" in text
    assert f"Study description: {contract.hostile_text}" in text
    # The prediction panel: label, confidence, its bar, the per-label chart.
    metrics = {m.label: m.value for m in at.metric}
    assert metrics == {"Predicted label": "pneumonia", "Confidence": "75.0%"}
    assert at.get("vega_lite_chart"), "the per-label bar chart is missing"
    # The neighbour grid: 10 cards, best first, similarity to 3 decimals, each with a case link.
    similarities = hit_similarities(at)
    assert len(similarities) == 10
    assert similarities[0] == "**#1** · similarity **0.988**"
    assert similarities[1] == "**#2** · similarity **0.978**"
    assert "Diagnosis: nodule, emphysema" in text and "Diagnosis: pneumonia" in text
    assert "Case: CASE-000" in text and "Modality: CT · CHEST" in text
    assert "Study UID: 1.2.840.0\nSeries UID: 1.2.840.0.0" in plain_texts(at)
    excerpts = [t for t in plain_texts(at) if t.startswith("Report 0:")]
    assert len(excerpts) == 2  # the excerpt on the card, the full text in the expander
    short, full = sorted(excerpts, key=len)
    assert len(short) <= 111 and short.endswith("…") and "END-OF-REPORT-0" not in short
    assert full.endswith("END-OF-REPORT-0")
    others = {"Save this query as a new case", "Search a region of the image"}
    assert [e.label for e in at.expander if e.label not in others] == ["Full report"] * 10
    links = at.get("page_link")
    assert len(links) == 10
    assert links[0].proto.page == "case" and "case_id=200" in links[0].proto.query_string
    # The query's own patient is flagged on its neighbour.
    assert [c.value for c in at.caption].count(":orange[Same patient as the query]") == 1
    # 1 query preview + 10 thumbnails, all fetched server-side.
    assert len(at.image) == 11


def test_reruns_reuse_the_search_and_the_thumbnails(
    monkeypatch: pytest.MonkeyPatch, contract: ContractApi, png_bytes: bytes
) -> None:
    at = upload(start_app(monkeypatch, contract.url), png_bytes)
    fetched = len(contract.thumbnail_requests)
    assert fetched <= 10
    at.run()
    assert len(contract.searches) == 1  # same query, same filters: no second search
    assert len(contract.thumbnail_requests) == fetched
    assert len(hit_similarities(at)) == 10


def test_broken_media_warns_without_traceback(
    monkeypatch: pytest.MonkeyPatch, contract: ContractApi, png_bytes: bytes
) -> None:
    at = upload(start_app(monkeypatch, contract.url), contract.broken_media_prefix + png_bytes)
    assert not at.exception, [e.value for e in at.exception]
    warnings = [w.value for w in at.warning]
    assert "The query preview sent by the API could not be displayed." in warnings
    assert warnings.count("No thumbnail: No image with id 999.") == 10
    assert len(hit_similarities(at)) == 10


def test_hostile_header_text_is_never_markdown(
    monkeypatch: pytest.MonkeyPatch, contract: ContractApi, png_bytes: bytes
) -> None:
    at = upload(start_app(monkeypatch, contract.url), png_bytes)
    assert contract.hostile_text in page_text(at)
    for body in markdown_texts(at):
        assert "<script>" not in body and "evil.example" not in body


def test_changing_k_requeries(
    monkeypatch: pytest.MonkeyPatch, contract: ContractApi, png_bytes: bytes
) -> None:
    at = upload(start_app(monkeypatch, contract.url), png_bytes)
    assert contract.searches[-1].k == 10
    at.slider(key="k").set_value(3).run()
    assert not at.exception
    assert contract.searches[-1].k == 3
    assert len(hit_similarities(at)) == 3


def test_every_filter_is_sent(
    monkeypatch: pytest.MonkeyPatch, contract: ContractApi, png_bytes: bytes
) -> None:
    at = upload(start_app(monkeypatch, contract.url), png_bytes)
    at.selectbox(key="modality").set_value("MR").run()
    assert contract.searches[-1].modality == "MR"
    at.selectbox(key="body_part").set_value("KNEE").run()
    at.selectbox(key="label").set_value("nodule").run()
    at.slider(key="min_similarity").set_value(0.5).run()
    at.radio(key="group_by").set_value("study").run()
    at.checkbox(key="exclude_patient").check().run()
    assert not at.exception, [e.value for e in at.exception]
    call = contract.searches[-1]
    assert (call.modality, call.body_part, call.label, call.min_similarity) == ("MR", "KNEE", "nodule", 0.5)
    assert (call.group_by, call.exclude_patient) == ("study", True)
    assert not [c for c in at.caption if "Same patient" in c.value]  # the API left the patient out
    assert any("pass the filters" in c.value for c in at.caption)
    at.selectbox(key="modality").set_value("any").run()
    at.radio(key="group_by").set_value("none").run()
    assert contract.searches[-1].modality is None and contract.searches[-1].group_by is None


def test_ct_window_presets_and_sliders_rerender_the_preview(
    monkeypatch: pytest.MonkeyPatch, contract: ContractApi, png_bytes: bytes
) -> None:
    at = upload(start_app(monkeypatch, contract.url), contract.ct_prefix + png_bytes, "ct.dcm")
    preset = at.selectbox(key="wl_preset")
    assert preset.options[0] == "As decoded" and "Lung (W1500 L-600)" in preset.options
    assert (at.slider(key="wl_center").value, at.slider(key="wl_width").value) == (40.0, 400.0)
    assert "(HU)" in at.slider(key="wl_center").label
    assert not contract.renders  # as decoded: the preview from the search answer
    preset.set_value("lung").run()
    assert not at.exception, [e.value for e in at.exception]
    assert (at.slider(key="wl_center").value, at.slider(key="wl_width").value) == (-600.0, 1500.0)
    # the query once, and every neighbour's thumbnail through the same window (they follow the window)
    query_renders = [(r.center, r.width) for r in contract.renders if r.image_id is None]
    assert query_renders == [(-600.0, 1500.0)]
    neighbours = [r for r in contract.renders if r.image_id is not None]
    assert sorted(r.image_id for r in neighbours) == [100 + i for i in range(10)]
    assert {(r.center, r.width) for r in neighbours} == {(-600.0, 1500.0)}
    at.slider(key="wl_center").set_value(100.0).run()
    assert at.selectbox(key="wl_preset").value == "custom"
    assert [(r.center, r.width) for r in contract.renders if r.image_id is None][-1] == (100.0, 1500.0)
    assert len(contract.searches) == 1  # windowing never searches again


def test_png_query_offers_no_ct_presets(
    monkeypatch: pytest.MonkeyPatch, contract: ContractApi, png_bytes: bytes
) -> None:
    at = upload(start_app(monkeypatch, contract.url), png_bytes)
    assert at.selectbox(key="wl_preset").options == ["As decoded", "Custom"]
    assert "(grey levels)" in at.slider(key="wl_width").label


def test_pick_an_archived_case_searches_by_image(
    monkeypatch: pytest.MonkeyPatch, contract: ContractApi
) -> None:
    at = start_app(monkeypatch, contract.url)
    at.radio(key="query_mode").set_value("Pick an archived case").run()
    assert not at.exception, [e.value for e in at.exception]
    picker = at.selectbox(key="archive_case")
    assert len(picker.options) == contract.max_hits
    assert contract.searches[-1].image_id == 100
    picker.set_value(203).run()
    assert contract.searches[-1].image_id == 103
    assert len(hit_similarities(at)) == 10
    assert "File: archived image 103" in page_text(at)
    at.selectbox(key="wl_preset").set_value("custom").run()
    at.slider(key="wl_width").set_value(100.0).run()
    assert contract.renders[-1].image_id == 103


def test_no_labeled_neighbours(
    monkeypatch: pytest.MonkeyPatch, contract: ContractApi, png_bytes: bytes
) -> None:
    at = upload(start_app(monkeypatch, contract.url), contract.unlabeled_prefix + png_bytes)
    assert not at.exception
    assert any("No labeled neighbours" in i.value for i in at.info)
    assert not at.metric
    assert "Diagnosis: —" in page_text(at)


def test_uncertain_prediction_says_no_reliable_match_and_shows_the_head(
    monkeypatch: pytest.MonkeyPatch, contract: ContractApi, png_bytes: bytes
) -> None:
    at = upload(start_app(monkeypatch, contract.url), contract.uncertain_prefix + png_bytes)
    assert not at.exception, [e.value for e in at.exception]
    warnings = [w.value for w in at.warning]
    expected = "No reliable match: the query is far from every stored case (top similarity 0.27 < 0.62)."
    assert warnings == [expected, expected]  # the vote's panel and the head's panel
    # Unreliable predictions get no big label: each panel leans in a small caption instead.
    assert not at.metric
    leaning = [c.value for c in at.caption if c.value.startswith("Leaning")]
    assert leaning == [
        "Leaning pneumonia (75.0%), not shown as a prediction: read the neighbours instead.",
        "Leaning nodule (90.0%), not shown as a prediction: read the neighbours instead.",
    ]
    assert [s.value for s in at.subheader if s.value in ("Prediction", "Trained head")] == [
        "Prediction",
        "Trained head",
    ]


def test_trusted_prediction_has_no_warning_and_no_head_panel(
    monkeypatch: pytest.MonkeyPatch, contract: ContractApi, png_bytes: bytes
) -> None:
    at = upload(start_app(monkeypatch, contract.url), png_bytes)
    assert not at.exception
    assert not [w.value for w in at.warning if "No reliable match" in w.value]
    assert "Trained head" not in [s.value for s in at.subheader]


@pytest.mark.parametrize(("kind", "status"), [("unsupported", 415), ("undecodable", 422)])
def test_api_error_is_shown_without_traceback(
    monkeypatch: pytest.MonkeyPatch, contract: ContractApi, kind: str, status: int
) -> None:
    prefix: bytes = getattr(contract, f"{kind}_prefix")
    detail: str = getattr(contract, f"{kind}_detail")
    at = upload(start_app(monkeypatch, contract.url), prefix + b" not an image", "notes.txt")
    assert not at.exception
    assert [e.value for e in at.error] == [f"Search failed (HTTP {status}): {detail}"]
    assert not hit_similarities(at)


def test_unreachable_api(monkeypatch: pytest.MonkeyPatch, dead_api_url: str) -> None:
    at = start_app(monkeypatch, dead_api_url)
    errors = [e.value for e in at.error]
    assert len(errors) == 1
    assert errors[0].startswith(f"Cannot reach the search API: Cannot reach the search API at {dead_api_url}")
    assert "medcbir serve" in errors[0]
    assert not at.exception


def test_login_screen_signs_in_and_out(monkeypatch: pytest.MonkeyPatch, contract: ContractApi) -> None:
    at = start_app(monkeypatch, contract.url, token=None)
    assert [t.value for t in at.title] == ["Sign in"]
    assert not contract.searches and not at.sidebar.text
    at.text_input(key="login_username").input(CONTRACT_USER)
    at.text_input(key="login_password").input("wrong password!")
    at.button[0].click().run()
    assert [e.value for e in at.error] == ["Wrong username or password."]
    assert "api_token" not in at.session_state
    at.text_input(key="login_password").input(CONTRACT_PASSWORD)
    at.button[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state["api_token"] == CONTRACT_TOKEN
    assert "login_password" not in at.session_state  # the password is not kept
    assert "Similar case search" in [t.value for t in at.title]
    assert CONTRACT_USER in [t.value for t in at.sidebar.text]
    at.button(key="sign_out").click().run()
    assert [t.value for t in at.title] == ["Sign in"]
    assert "api_token" not in at.session_state


def test_a_token_the_api_refuses_shows_the_login(
    monkeypatch: pytest.MonkeyPatch, contract: ContractApi
) -> None:
    at = start_app(monkeypatch, contract.url, token="expired-token")
    assert [t.value for t in at.title] == ["Sign in"]
    assert "api_token" not in at.session_state


def test_api_url_argument_wins_over_env(
    monkeypatch: pytest.MonkeyPatch, contract: ContractApi, dead_api_url: str
) -> None:
    monkeypatch.setenv("MEDCBIR_UI_API_URL", dead_api_url)
    monkeypatch.setattr(sys, "argv", ["ui/app.py", "--api-url", contract.url])
    at = AppTest.from_file(APP, default_timeout=TIMEOUT_S)
    at.session_state["api_token"] = CONTRACT_TOKEN
    at.run()
    assert not at.exception
    assert not at.sidebar.error
    assert contract.url in [t.value for t in at.sidebar.text]


def test_live_engine_search(
    monkeypatch: pytest.MonkeyPatch, live_api: str, live_token: str, png_bytes: bytes
) -> None:
    """The page against the real engine API: whatever the archive holds, the page must agree with the API."""
    at = start_app(monkeypatch, live_api, live_token)
    assert not at.sidebar.error
    with ApiClient(live_api, token=live_token) as client:
        health = client.health()
        expected = client.search(png_bytes, "query.png", k=5)
    assert f"Index size: {health.index_size:,} vectors" in [t.value for t in at.sidebar.text]
    at.slider(key="k").set_value(5).run()
    upload(at, png_bytes)
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    similarities = hit_similarities(at)
    assert len(similarities) == len(expected.hits)
    text = page_text(at)
    for hit, shown in zip(expected.hits, similarities, strict=True):
        assert shown == f"**#{hit.rank}** · similarity **{hit.similarity:.3f}**"
        assert f"Case: {hit.case_key}" in text
    if expected.prediction.label is None:
        assert any("No labeled neighbours" in i.value for i in at.info)
    elif expected.prediction.uncertain:
        assert not at.metric  # no big label for an unreliable prediction
        assert any(c.value.startswith(f"Leaning {expected.prediction.label} (") for c in at.caption)
    else:
        assert {m.label: m.value for m in at.metric}["Predicted label"] == expected.prediction.label


def test_live_engine_search_dicom(monkeypatch: pytest.MonkeyPatch, live_api: str, live_token: str) -> None:
    """A real DICOM query (pydicom's bundled CT) through the page, uploaded without an extension."""
    data_module = pytest.importorskip("pydicom.data")
    data = Path(data_module.get_testdata_file("CT_small.dcm")).read_bytes()
    at = upload(start_app(monkeypatch, live_api, live_token), data, "CT_small")
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    text = page_text(at)
    assert "Modality: CT" in text
    with ApiClient(live_api, token=live_token) as client:
        expected = client.search(data, "CT_small", k=10)
    shown = hit_similarities(at)
    assert len(shown) == len(expected.hits) > 0
    assert shown[0] == f"**#1** · similarity **{expected.hits[0].similarity:.3f}**"
    assert f"Case: {expected.hits[0].case_key}" in text
    if expected.hits[0].report:
        assert any(t.startswith(expected.hits[0].report[:20]) for t in plain_texts(at))
    assert len(at.image) == 1 + len(expected.hits)


def test_viewer_link_only_for_pacs_hits_with_http_links() -> None:
    from search_api.schemas import Hit, PacsLink
    from ui.hits import viewer_link

    base = {
        "rank": 1,
        "image_id": 1,
        "case_id": 1,
        "case_key": "k",
        "source_uri": "pacs://p/studies/1/series/2/instances/3",
        "similarity": 0.9,
        "thumbnail_url": "/t",
        "case_url": "/c",
    }
    link = {"pacs": "p", "study_instance_uid": "1", "series_instance_uid": "2", "sop_instance_uid": "3"}
    assert viewer_link(Hit(**base)) is None
    assert viewer_link(
        Hit(**base, pacs=PacsLink(**link, viewer_url="https://v/viewer?StudyInstanceUIDs=1"))
    ) == ("https://v/viewer?StudyInstanceUIDs=1")
    assert viewer_link(Hit(**base, pacs=PacsLink(**link, viewer_url="javascript:alert(1)"))) is None


def test_the_case_picker_searches_by_words_and_picks_from_thumbnails(
    monkeypatch: pytest.MonkeyPatch, contract: ContractApi
) -> None:
    at = start_app(monkeypatch, contract.url)
    at.radio(key="query_mode").set_value("Pick an archived case").run()
    assert contract.case_queries[-1] is None
    at.text_input(key="archive_text").set_value("emphysema").run()
    assert not at.exception, [e.value for e in at.exception]
    assert contract.case_queries[-1] == "emphysema"
    matching = [200 + i for i in range(CONTRACT_HITS) if i % 3 == 0]  # the nodule + emphysema cases
    options = at.selectbox(key="archive_case").options
    assert [o.split(" ·")[0] for o in options] == [f"#{c}" for c in matching]
    buttons = [b for b in at.button if (b.key or "").startswith("pick_case_")]
    assert [b.key for b in buttons] == [f"pick_case_{c}" for c in matching]
    at.button(key=f"pick_case_{matching[2]}").click().run()
    assert contract.searches[-1].image_id == matching[2] - 100  # the thumbnail's case became the query
    assert at.selectbox(key="archive_case").value == matching[2]

    at.text_input(key="archive_text").set_value("no such words").run()
    assert any("No case matches" in i.value for i in at.info)
