"""Accounts in the catalog: users (argon2 hashes), roles, service API keys and signed-out tokens."""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from indexer.catalog import ApiKey, Catalog, RevokedToken, User
from indexer.errors import IndexerError

ROLES = ("radiologist", "admin")
MIN_PASSWORD_LENGTH = 12
API_KEY_PREFIX = "mcb_"
_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_HASHER = PasswordHasher()  # argon2id with the library's current recommended parameters
# Verified against when the user does not exist, so a wrong username costs as long as a wrong password.
_DUMMY_HASH = _HASHER.hash(secrets.token_urlsafe(16))
# Each argon2 hash or check takes 64 MiB and a core for ~0.1 s: at most this many run at once in the
# process, whoever asks (logins of known and unknown users alike, new users, password changes).
DEFAULT_CONCURRENT_HASHES = 2
HASH_WAIT_S = 30.0
_hash_slots = threading.BoundedSemaphore(DEFAULT_CONCURRENT_HASHES)


class AccountError(IndexerError):
    """A user operation that cannot be done (unknown user, bad role, weak password, name taken)."""


class UnknownAccountError(AccountError):
    """No account has this username."""


class AccountConflictError(AccountError):
    """The operation clashes with an existing account (name taken, last active admin)."""


class PasswordHashingBusyError(AccountError):
    """Every password hashing slot stayed busy for HASH_WAIT_S (a flood of sign-ins)."""


@dataclass(frozen=True)
class Account:
    """A user as the rest of the system sees it (no hash)."""

    id: int
    username: str
    role: str
    disabled: bool
    service: bool
    created_at: datetime
    token_generation: int = 0  # tokens carry it; a password change bumps it, refusing older tokens

    @classmethod
    def of(cls, user: User) -> Account:
        return cls(
            user.id,
            user.username,
            user.role,
            user.disabled,
            user.service,
            user.created_at,
            user.token_generation or 0,
        )


def limit_password_hashing(concurrent: int) -> None:
    """Let at most `concurrent` argon2 hashes or checks run at once in this process (from now on)."""
    global _hash_slots
    if concurrent < 1:
        raise AccountError("the number of concurrent password hashes must be at least 1")
    _hash_slots = threading.BoundedSemaphore(concurrent)


@contextmanager
def _hashing_slot() -> Iterator[None]:
    slots = _hash_slots  # the one acquired is the one released, even if the limit changes meanwhile
    if not slots.acquire(timeout=HASH_WAIT_S):
        raise PasswordHashingBusyError(
            "too many sign-ins are being checked at once; try again in a few seconds"
        )
    try:
        yield
    finally:
        slots.release()


def hash_password(password: str) -> str:
    """An argon2id hash of the password (salted, self-describing), within the process's hashing cap."""
    with _hashing_slot():
        return _HASHER.hash(password)


def _password_matches(stored: str, password: str) -> bool:
    with _hashing_slot():
        try:
            return bool(_HASHER.verify(stored, password))
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise AccountError(f"unknown role {role!r}; choose one of: {', '.join(ROLES)}")
    return role


def check_password_strength(password: str) -> None:
    """Refuse short passwords; there are no default passwords, so every one is chosen by a person."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")


def _named(username: str) -> ColumnElement[bool]:
    # Usernames are unique whatever their case (migration 0004), and found whatever their case.
    return func.lower(User.username) == username.lower()


def _user(session: Session, username: str) -> User:
    user = session.scalars(select(User).where(_named(username))).first()
    if user is None:
        raise UnknownAccountError(f"no user named {username!r}; see `medcbir users list`")
    return user


def create_user(
    catalog: Catalog, username: str, password: str | None, role: str, *, service: bool = False
) -> Account:
    """A new user; people need a password, service accounts sign in with API keys only."""
    if not _USERNAME.match(username):
        raise AccountError("a username has 1-64 letters, digits or . _ @ - and starts with a letter or digit")
    _check_role(role)
    if not service:
        if password is None:
            raise AccountError("a user needs a password (service accounts use API keys instead)")
        check_password_strength(password)
    password_hash = hash_password(password) if password is not None else None  # outside the session
    with catalog.session() as session:
        taken = session.scalars(select(User.username).where(_named(username))).first()
        if taken is not None:
            raise AccountConflictError(
                f"a user named {taken!r} already exists (usernames are unique whatever their case); "
                "choose another name"
            )
        user = User(
            username=username,
            password_hash=password_hash,
            role=role,
            service=service,
            disabled=False,
        )
        session.add(user)
        session.flush()
        return Account.of(user)


def authenticate(catalog: Catalog, username: str, password: str) -> Account | None:
    """The active user with this username and password, or None (same cost whether the user exists).

    The hash is checked outside any database session, within the process's hashing cap."""
    with catalog.session() as session:
        user = session.scalars(select(User).where(_named(username))).first()
        stored = user.password_hash if user is not None and user.password_hash else _DUMMY_HASH
        user_id = user.id if user is not None and user.password_hash else None
    if not _password_matches(stored, password) or user_id is None:
        return None
    with catalog.session() as session:
        found = session.get(User, user_id)
        if found is None or found.disabled or found.password_hash != stored:
            return None  # deleted, disabled or given a new password meanwhile
        if _HASHER.check_needs_rehash(stored):
            found.password_hash = hash_password(password)
        return Account.of(found)


def get_account(catalog: Catalog, username: str) -> Account | None:
    """The user, or None."""
    with catalog.session() as session:
        user = session.scalars(select(User).where(_named(username))).first()
        return Account.of(user) if user is not None else None


def list_accounts(catalog: Catalog) -> list[Account]:
    """Every user, by name."""
    with catalog.session() as session:
        return [Account.of(u) for u in session.scalars(select(User).order_by(User.username))]


def count_admins(catalog: Catalog) -> int:
    """Active admins (the last one cannot be disabled or demoted)."""
    with catalog.session() as session:
        query = select(func.count()).select_from(User).where(User.role == "admin", User.disabled.is_(False))
        return int(session.scalar(query) or 0)


def _guard_last_admin(catalog: Catalog, user: User, *, demote: bool) -> None:
    if demote and user.role == "admin" and not user.disabled and count_admins(catalog) <= 1:
        raise AccountConflictError("this is the last active admin; create another admin first")


def set_disabled(catalog: Catalog, username: str, disabled: bool) -> Account:
    """Disable (tokens and API keys stop working at once) or enable a user."""
    with catalog.session() as session:
        user = _user(session, username)
        if disabled:
            _guard_last_admin(catalog, user, demote=True)
        user.disabled = disabled
        return Account.of(user)


def set_role(catalog: Catalog, username: str, role: str) -> Account:
    """Change a user's role (effective on their next request)."""
    _check_role(role)
    with catalog.session() as session:
        user = _user(session, username)
        _guard_last_admin(catalog, user, demote=role != "admin")
        user.role = role
        return Account.of(user)


def set_password(catalog: Catalog, username: str, password: str) -> None:
    """Replace a user's password; every token issued before is refused from now on."""
    check_password_strength(password)
    password_hash = hash_password(password)
    with catalog.session() as session:
        user = _user(session, username)
        user.password_hash = password_hash
        user.token_generation = (user.token_generation or 0) + 1


def _key_hash(key: str) -> str:
    # API keys are 256-bit random strings: a plain sha256 is enough (no dictionary to attack).
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_api_key(catalog: Catalog, username: str) -> str:
    """A new API key for the user, returned once; only its hash is stored."""
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    with catalog.session() as session:
        user = _user(session, username)
        session.add(ApiKey(user_id=user.id, key_hash=_key_hash(key), prefix=key[:12], revoked=False))
    return key


def account_for_api_key(catalog: Catalog, key: str) -> Account | None:
    """The active user owning this (unrevoked) API key, or None."""
    if not key.startswith(API_KEY_PREFIX):
        return None
    with catalog.session() as session:
        row = session.execute(
            select(User)
            .join(ApiKey, ApiKey.user_id == User.id)
            .where(ApiKey.key_hash == _key_hash(key), ApiKey.revoked.is_(False))
        ).scalar()
        if row is None or row.disabled:
            return None
        return Account.of(row)


# -- signed-out tokens ---------------------------------------------------------------------------


def _naive_utc(moment: datetime) -> datetime:
    # Stored times are UTC without a zone (SQLite drops it); compare like with like.
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def revoke_token(catalog: Catalog, jti: str, expires_at: datetime) -> None:
    """Refuse the token with this id from now on (every worker reads the same catalog); entries whose
    token has expired anyway are purged on the way."""
    now = _naive_utc(datetime.now(UTC))
    with catalog.session() as session:
        session.execute(delete(RevokedToken).where(RevokedToken.expires_at < now))
        if session.get(RevokedToken, jti) is None:
            session.add(RevokedToken(jti=jti, expires_at=_naive_utc(expires_at), revoked_at=now))


def is_token_revoked(catalog: Catalog, jti: str) -> bool:
    """True when the token with this id was signed out."""
    with catalog.session() as session:
        return session.get(RevokedToken, jti) is not None
