"""Raw faiss handling: an index from a spec, search parameters, GPU copies, and the ids an index holds."""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from indexer.vectors.kinds import IndexSpec
from indexer.vectors.tuning import Tuning


def gpu_available() -> bool:
    """True when this faiss build has GPU support and sees a CUDA device."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def new_index(spec: IndexSpec) -> faiss.Index:
    """An empty inner-product index of the spec's kind, removable and reconstructible by id."""
    index = faiss.index_factory(spec.dim, spec.factory, faiss.METRIC_INNER_PRODUCT)
    if spec.kind == "hnsw":
        faiss.downcast_index(index.index).hnsw.efConstruction = spec.ef_construction  # type: ignore[attr-defined]
    if spec.needs_training:
        ivf = faiss.extract_index_ivf(index)
        # Catalog ids are arbitrary: a hashtable direct map lets us reconstruct and remove by id.
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]
        ivf.cp.niter = 10  # type: ignore[attr-defined]
        if spec.kind == "ivf_pq":
            pq_index = faiss.downcast_index(ivf)
            pq_index.pq.cp.niter = 10  # type: ignore[attr-defined]
            pq_index.do_polysemous_training = False  # type: ignore[attr-defined]  # slow, and unused here
    return index


def to_gpu(index: faiss.Index) -> faiss.Index:
    """A GPU copy of a CPU index (device 0) that keeps its resources alive."""
    resources = faiss.StandardGpuResources()  # type: ignore[attr-defined]
    gpu_index: Any = faiss.index_cpu_to_gpu(resources, 0, index)  # type: ignore[attr-defined]
    gpu_index._resources_ref = resources  # keep the resources alive as long as the index
    return gpu_index


def stored_ids(index: faiss.Index) -> npt.NDArray[np.int64]:
    """Every id an index holds (its id map, or its IVF lists)."""
    if hasattr(index, "id_map"):
        return faiss.vector_to_array(index.id_map).astype(np.int64)  # type: ignore[attr-defined]
    lists: Any = faiss.extract_index_ivf(index).invlists
    parts = []
    for list_no in range(lists.nlist):
        size = lists.list_size(list_no)
        if size:
            parts.append(faiss.rev_swig_ptr(lists.get_ids(list_no), size).copy())
    return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, np.int64)


def set_search_param(index: faiss.Index, tuning: Tuning) -> None:
    """Apply the tuning's nprobe / efSearch to a faiss index (CPU or GPU)."""
    if tuning.param == "nprobe":
        try:
            faiss.extract_index_ivf(index).nprobe = tuning.value
        except RuntimeError:
            faiss.GpuParameterSpace().set_index_parameter(index, "nprobe", tuning.value)  # type: ignore[attr-defined]
    elif tuning.param == "efSearch":
        inner = index.index if hasattr(index, "id_map") else index  # type: ignore[attr-defined]
        faiss.downcast_index(inner).hnsw.efSearch = tuning.value  # type: ignore[attr-defined]
