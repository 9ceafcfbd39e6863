"""The admin bearer check shared by the inference service's and the monitor's admin routes."""

from __future__ import annotations

import hmac


def bearer_token(authorization: str) -> str:
    """The token of an ``Authorization: Bearer <token>`` header ('' for any other scheme).

    >>> bearer_token("Bearer abc "), bearer_token("bearer abc"), bearer_token("Basic abc"), bearer_token("")
    ('abc', 'abc', '', '')
    """
    return authorization[7:].strip() if authorization[:7].lower() == "bearer " else ""


def is_admin(authorization: str, admin_token: str) -> bool:
    """Whether the header carries ``admin_token``; always ``False`` while no token is set.

    >>> is_admin("Bearer s3cret", "s3cret"), is_admin("Bearer guess", "s3cret"), is_admin("Bearer ", "")
    (True, False, False)
    """
    # compare_digest: the time taken must not reveal how much of the token was right.
    return bool(admin_token) and hmac.compare_digest(bearer_token(authorization).encode(), admin_token.encode())
