"""Pseudonymous patient references: a keyed hash of the patient id, with the key kept in the data folder."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path


def load_or_create_key(path: Path) -> bytes:
    """The secret key, created (owner-only permissions) on first use."""
    if path.exists():
        return bytes.fromhex(path.read_text().strip())
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key.hex())
    return key


def patient_reference(key: bytes, patient_id: str | None) -> str | None:
    """A stable pseudonym for a patient id; the raw id is never stored."""
    if not patient_id:
        return None
    digest = hmac.new(key, patient_id.strip().encode("utf-8"), hashlib.sha256).hexdigest()
    return f"P-{digest[:16]}"
