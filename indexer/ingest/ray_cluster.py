"""Joining or starting the Ray that `--engine ray` runs on, and the errors that say how to fix it."""

from __future__ import annotations

import logging
import os
from types import ModuleType
from typing import Any

from indexer.errors import IndexerError
from indexer.extras import MissingExtraError, require_extra


class RayNotInstalledError(MissingExtraError):
    """`--engine ray` was asked for but Ray Data is not installed."""


def import_ray() -> ModuleType:
    """The `ray` module with Ray Data loaded, or an error naming the extra to install."""
    needed_for = "--engine ray needs Ray Data"
    ray = require_extra("ray", "ray", needed_for=needed_for, error=RayNotInstalledError)
    require_extra("ray.data", "ray", needed_for=needed_for, error=RayNotInstalledError)
    return ray


class RayClusterError(IndexerError):
    """The Ray cluster named by --address cannot be used."""


def ensure_ray(ray: ModuleType, address: str | None) -> bool:
    """Connect to the given cluster, or start a quiet local Ray on this machine's cores; True when started here."""
    if address and address.startswith("ray://"):
        # Ray Data's executor needs a driver inside the cluster (tried with Ray 2.60: it fails over Ray Client)
        raise RayClusterError(
            f"--engine ray cannot drive Ray Data over Ray Client ({address}): run `medcbir index ... "
            "--engine ray --address auto` on the head node (or submit it there with `ray job submit`)"
        )
    if ray.is_initialized():
        return False
    quiet: dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": logging.WARNING,
        "log_to_driver": False,
    }
    if address:
        try:
            ray.init(address=address, **{k: v for k, v in quiet.items() if k != "include_dashboard"})
        except ConnectionError as exc:
            raise RayClusterError(
                f"cannot join the Ray cluster at {address}: is `ray start --head` running there? A cluster "
                "with token authentication also needs RAY_AUTH_MODE=token and its token on this machine "
                "(or use --address auto on a cluster node)"
            ) from exc
    else:
        # "local": never join a cluster that `ray start` left registered on this machine
        ray.init(address="local", num_cpus=os.cpu_count() or 1, **quiet)
    return True
