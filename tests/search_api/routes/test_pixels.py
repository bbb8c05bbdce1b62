"""The compare viewer's data routes over the live API: raw modality values of every frame, and similarity maps."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pydicom
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut
from skimage import data as skdata

from search_api.routes.pixels import read_pixels
from tests.helpers import dicom_testfile

API = httpx.Client(timeout=120)


def _values(body: dict[str, object]) -> np.ndarray:
    data = np.frombuffer(base64.b64decode(str(body["data"])), dtype="<f4")
    shape = [int(body["frames"]), int(body["rows"]), int(body["columns"])]  # type: ignore[call-overload]
    if body.get("channels", 1) == 3:
        shape.append(3)
    return data.reshape(shape)


def _image_id(url: str, headers: dict[str, str], name: str, case_key: str) -> int:
    data = dicom_testfile(name).read_bytes()
    body = API.post(f"{url}/search", files={"file": (name, data)}, data={"k": "10"}, headers=headers).json()
    return next(h["image_id"] for h in body["hits"] if h["case_key"] == case_key)


def test_an_archived_ct_comes_back_in_hounsfield_units(
    live_api_url: str, radiologist_headers: dict[str, str]
) -> None:
    image_id = _image_id(live_api_url, radiologist_headers, "CT_small.dcm", "C-CT-1")
    response = API.get(f"{live_api_url}/images/{image_id}/pixels", headers=radiologist_headers)
    assert response.status_code == 200, response.text
    body = response.json()
    ds = pydicom.dcmread(dicom_testfile("CT_small.dcm"))
    expected = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
    assert body["units"] == "modality" and body["modality"] == "CT" and body["invert"] is False
    assert (body["frames"], body["rows"], body["columns"]) == (1, 128, 128)
    np.testing.assert_array_equal(_values(body)[0], expected)  # before any window: nothing clipped
    # No window in the header: imaging's CT default (soft tissue, L40 W400), the one the preview used.
    assert (body["window_center"], body["window_width"]) == (40.0, 400.0)
    assert body["min_value"] == expected.min() and body["max_value"] == expected.max()

    small = API.get(
        f"{live_api_url}/images/{image_id}/pixels?max_side=32", headers=radiologist_headers
    ).json()
    assert (small["rows"], small["columns"]) == (32, 32)
    assert abs(float(_values(small).mean()) - float(expected.mean())) < 1.0  # box-averaged, not sampled
    assert small["pixel_spacing"] == [s * 4 for s in map(float, ds.PixelSpacing)]

    assert API.get(f"{live_api_url}/images/{image_id}/pixels").status_code == 401  # signed in only
    assert API.get(f"{live_api_url}/images/999999/pixels", headers=radiologist_headers).status_code == 404


def test_an_uploaded_multi_frame_query_sends_every_frame_to_its_owner_only(
    live_api_url: str, radiologist_headers: dict[str, str], admin_headers: dict[str, str]
) -> None:
    path = get_testdata_file("emri_small.dcm")
    assert path is not None
    data = open(path, "rb").read()  # noqa: SIM115 - a test file, read once
    search = API.post(
        f"{live_api_url}/search", files={"file": ("emri.dcm", data)}, headers=radiologist_headers
    )
    assert search.status_code == 200, search.text
    query_id = search.json()["query_id"]
    body = API.get(f"{live_api_url}/queries/{query_id}/pixels", headers=radiologist_headers).json()
    ds = pydicom.dcmread(path)
    assert body["source_frames"] == body["frames"] == 10 and body["frame_indices"] == list(range(10))
    assert body["start_frame"] == 5  # the representative (middle) frame the search embedded
    np.testing.assert_array_equal(_values(body), apply_modality_lut(ds.pixel_array, ds).astype(np.float32))
    assert not np.array_equal(_values(body)[0], _values(body)[9])  # frames differ: really every frame

    sampled = API.get(
        f"{live_api_url}/queries/{query_id}/pixels?max_frames=4", headers=radiologist_headers
    ).json()
    assert sampled["frames"] == 4 and 5 in sampled["frame_indices"]
    assert sampled["frame_indices"][sampled["start_frame"]] == 5

    other = API.get(f"{live_api_url}/queries/{query_id}/pixels", headers=admin_headers)
    assert other.status_code == 404  # another user's query is as unknown as an expired one


def test_a_png_comes_back_in_colour_and_similarity_maps_as_values(
    live_api_url: str, radiologist_headers: dict[str, str]
) -> None:
    ct = _image_id(live_api_url, radiologist_headers, "CT_small.dcm", "C-CT-1")
    hits = API.post(
        f"{live_api_url}/search/by-image/{ct}", data={"k": "10"}, headers=radiologist_headers
    ).json()["hits"]
    png = next(h for h in hits if h["case_key"] == "C-FUNDUS-1")
    body = API.get(f"{live_api_url}/images/{png['image_id']}/pixels", headers=radiologist_headers).json()
    assert body["units"] == "display" and (body["window_center"], body["window_width"]) == (127.5, 255.0)
    assert max(body["rows"], body["columns"]) == 512 and 0.0 <= body["min_value"] < body["max_value"] <= 255.0
    # The fundus photograph is colour: three channels, the PNG's own RGB values (512 px: nothing resized).
    assert body["channels"] == 3
    rgb = _values(body)[0]
    retina = np.asarray(Image.fromarray(np.asarray(skdata.retina())).resize((512, 512)), dtype=np.float32)
    np.testing.assert_allclose(rgb, retina, atol=0.5)
    assert float(np.abs(rgb[..., 0] - rgb[..., 1]).mean()) > 20  # red fundus: R and G really differ

    maps = API.get(
        f"{live_api_url}/images/{ct}/similarity/{png['image_id']}/maps", headers=radiologist_headers
    )
    assert maps.status_code == 200, maps.text
    result = maps.json()
    assert abs(result["score"] - png["similarity"]) < 1e-3  # the maps split exactly the similarity shown
    for side in ("query", "neighbour"):
        heat = np.frombuffer(base64.b64decode(result[side]["data"]), dtype="<f4")
        assert heat.size == result[side]["rows"] * result[side]["columns"]
        assert heat.min() >= 0.0 and heat.max() <= 1.0 and heat.max() > 0.5


def _encoded(array: np.ndarray, fmt: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, fmt)
    return out.getvalue()


def test_colour_is_sent_as_rgb_and_a_grey_picture_in_rgb_as_one_channel() -> None:
    # A colour slide (JPEG, 3 channels that differ): RGB, box-downsampled per channel to 512 px.
    ihc = np.asarray(skdata.immunohistochemistry())
    body = read_pixels(_encoded(ihc, "JPEG"), None, None).model_dump()
    assert body["channels"] == 3 and (body["rows"], body["columns"]) == (512, 512)
    rgb = _values(body)[0]
    assert rgb.shape == (512, 512, 3)
    np.testing.assert_allclose(rgb.mean(axis=(0, 1)), ihc.reshape(-1, 3).mean(axis=0), atol=3.0)
    assert float(np.abs(rgb[..., 0] - rgb[..., 2]).mean()) > 10

    # A grey photograph stored as RGB JPEG (chroma noise only): one channel, the window stays usable.
    camera = np.asarray(skdata.camera())
    grey = read_pixels(_encoded(np.dstack([camera] * 3), "JPEG"), None, None).model_dump()
    assert grey["channels"] == 1
    assert _values(grey).shape == (1, 512, 512)
    assert abs(float(_values(grey).mean()) - float(camera.mean())) < 2.0
    assert read_pixels(_encoded(camera, "PNG"), None, None).channels == 1
