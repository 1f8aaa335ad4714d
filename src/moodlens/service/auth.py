"""API tokens: created once, stored as SHA-256 hashes, sent as ``Authorization: Bearer``.

Roles, each including the ones after it:

* ``admin``: everything, deleting analyses and changing collections included;
* ``upload``: submit videos, cancel and retry jobs, and read;
* ``viewer``: read jobs, analyses, results and collections;
* ``ingest``: reserved for edge cameras' live batches (nothing else).

While no token exists, a server on loopback needs none (one person on their own machine);
once one exists, every request must carry one. The console logs in with a token, kept in
an HttpOnly, SameSite=Strict cookie.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets

from sqlalchemy import func, select, update
from sqlalchemy.exc import SQLAlchemyError

from moodlens.errors import MoodlensError, NotFoundError
from moodlens.service.tables import ROLES, TokenRow
from moodlens.store import Store

COOKIE = "moodlens_token"
RANK = {"admin": 3, "upload": 2, "viewer": 1, "ingest": 0}
"""What a role may do: a route needs at least a rank (ingest ranks apart: live batches only)."""


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(store: Store, name: str, role: str) -> str:
    """A new token for ``name`` with ``role``; returns the token, which is not stored."""
    if role not in ROLES:
        raise MoodlensError(f"role {role!r}: use one of {', '.join(ROLES)}")
    name = name.strip()
    if not name or len(name) > 255:
        raise MoodlensError("a token needs a name of 1-255 characters")
    token = "ml_" + secrets.token_urlsafe(32)
    with store.session() as s, s.begin():
        s.add(TokenRow(name=name, role=role, token_sha256=_hash(token)))
    return token


def list_tokens(store: Store) -> list[TokenRow]:
    with store.session() as s:
        return list(s.scalars(select(TokenRow).order_by(TokenRow.id)))


def revoke(store: Store, name_or_id: str) -> int:
    """Revoke the live tokens named ``name_or_id`` (or with that id); returns how many."""
    cond = TokenRow.name == name_or_id
    if name_or_id.isdigit():
        cond = cond | (TokenRow.id == int(name_or_id))
    with store.session() as s, s.begin():
        n = s.execute(update(TokenRow).where(cond, TokenRow.revoked_at.is_(None))
                      .values(revoked_at=dt.datetime.now(dt.timezone.utc))).rowcount
    if n == 0:
        raise NotFoundError(f"token {name_or_id!r}: no live token with that name or id")
    return n


def any_tokens(store: Store) -> bool:
    with store.session() as s:
        return bool(s.scalar(select(func.count()).select_from(TokenRow).where(TokenRow.revoked_at.is_(None))))


def check(store: Store, token: str) -> TokenRow | None:
    """The live token row for ``token``, or None (compared by hash, in constant time)."""
    if not token or len(token) > 512:
        return None
    digest = _hash(token)
    with store.session() as s:
        row = s.scalars(select(TokenRow).where(TokenRow.token_sha256 == digest,
                                               TokenRow.revoked_at.is_(None))).first()
    if row is None or not hmac.compare_digest(row.token_sha256, digest):
        return None
    now = dt.datetime.now(dt.timezone.utc)
    last = row.last_used_at
    if last is not None and last.tzinfo is None:  # SQLite gives naive UTC
        last = last.replace(tzinfo=dt.timezone.utc)
    if last is None or now - last > dt.timedelta(seconds=60):  # `tokens list` shows it; one write a minute
        try:
            with store.session() as s, s.begin():
                s.execute(update(TokenRow).where(TokenRow.id == row.id).values(last_used_at=now))
        except SQLAlchemyError:
            pass  # a busy database must not fail the request
    return row


__all__ = ["COOKIE", "RANK", "any_tokens", "check", "create_token", "list_tokens", "revoke"]
