"""`pacs sync --engine ray` against a live Orthanc: the same instances as the local engine, resumable, on a local Ray."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from indexer.archive import Archive
from indexer.ingest.pacs_sync import sync_pacs
from indexer.ingest.ray import RayOptions
from indexer.storage.dicomweb import StudyFilter
from tests.helpers import ThumbnailEncoder
from tests.pacs.corpus import corpus_files, upload_corpus
from tests.pacs.orthanc import OrthancServer
from tests.pacs.test_pacs_cli import invoke
from tests.pacs.test_pacs_sync import connect, ids_of, open_archive, sop_uids

# Ray Data's own context copies deprecated fields; that is not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")


def vectors_by_sop(archive: Archive) -> dict[str, npt.NDArray[np.float32]]:
    rows = archive.catalog.images_by_ids(ids_of(archive))
    found = {}
    for image_id, row in rows.items():
        vector = archive.catalog.embedding_of(image_id, archive.encoder.name)
        assert vector is not None
        found[row.sop_instance_uid or ""] = vector
    return found


# one local Ray, started once: about 45 s on 2 shared cores (under the 60 s that would make it `slow`)
def test_engine_ray_indexes_what_the_local_engine_indexes_and_resumes(
    orthanc: OrthancServer, tmp_path: Path
) -> None:
    ray = pytest.importorskip("ray")
    upload_corpus(orthanc, [p for p in corpus_files() if p.stat().st_size < 200_000][:16], tmp_path / "files")
    local = open_archive(tmp_path / "local")
    expected = sync_pacs(local, connect(orthanc, local), progress=False, workers=0)
    assert expected.ingest.indexed >= 8

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        archive = open_archive(tmp_path / "ray")
        pacs = connect(orthanc, archive)
        options = RayOptions(actors=1, window_bytes=256 * 1024)  # several windows: written one by one
        first_study = pacs.search_studies()[0]
        part = sync_pacs(
            archive,
            pacs,
            StudyFilter(study=first_study),
            progress=False,
            engine="ray",
            ray_options=options,
            factory=ThumbnailEncoder,
        )
        assert 0 < part.listed < expected.listed
        # the run goes on where the first one stopped: what is stored is neither fetched nor written again
        rest = sync_pacs(
            archive, pacs, progress=False, engine="ray", ray_options=options, factory=ThumbnailEncoder
        )
        assert rest.already_here == part.listed
        again = sync_pacs(
            archive, pacs, progress=False, engine="ray", ray_options=options, factory=ThumbnailEncoder
        )
    finally:
        ray.shutdown()

    assert part.ingest.indexed + rest.ingest.indexed == expected.ingest.indexed
    assert part.ingest.failed + rest.ingest.failed == expected.ingest.failed
    assert part.ingest.not_images + rest.ingest.not_images == expected.ingest.not_images
    uids = sop_uids(archive)
    assert sorted(uids) == sorted(sop_uids(local))  # the same set as the local engine
    assert not [uid for uid, n in Counter(uids).items() if n > 1]
    assert sorted(int(i) for i in archive.index.ids()) == sorted(ids_of(archive))
    assert vectors_by_sop(archive).keys() == vectors_by_sop(local).keys()
    for sop, vector in vectors_by_sop(archive).items():  # decoded and embedded the same way
        assert np.allclose(vector, vectors_by_sop(local)[sop], atol=1e-5), sop
    # as with the local engine, only the instances that failed or are not images are tried again
    assert again.ingest.indexed == 0
    assert again.listed - again.already_here == expected.ingest.failed + expected.ingest.not_images


def test_engine_options_are_checked_before_anything_runs(tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path)]
    bad = invoke(["pacs", "sync", "x", "--engine", "spark", *data])
    assert bad.exit_code == 2 and "--engine must be 'local' or 'ray'" in bad.output
    mixed = invoke(["pacs", "sync", "x", "--engine", "ray", "--workers", "2", *data])
    assert mixed.exit_code == 2 and "--workers is for --engine local" in mixed.output
    local = invoke(["pacs", "sync", "x", "--actors", "2", *data])
    assert local.exit_code == 2 and "need --engine ray" in local.output
