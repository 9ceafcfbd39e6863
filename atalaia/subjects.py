"""Subject ids: the keyed hash under which an end user's events are stored (see :mod:`atalaia.privacy`).

Kept apart from :mod:`atalaia.privacy` so that the inference service imports no database code.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

from atalaia.settings import Settings

log = logging.getLogger(__name__)

__all__ = ["PEPPER_FILE", "subject_id", "subject_pepper"]

PEPPER_FILE = Path("secrets") / "subject_pepper"


# -- subject id ---------------------------------------------------------------------------------
def subject_pepper(settings: Settings) -> bytes:
    """The secret key of subject ids: ``ATALAIA_SUBJECT_PEPPER``, else the generated key file.

    The file is created once (32 random bytes, hex, mode 0600) and read afterwards, so every
    service sharing ``ATALAIA_HOME`` computes the same ids. Services on different machines must
    share ``ATALAIA_SUBJECT_PEPPER`` instead.
    """
    configured = settings.subject_pepper.get_secret_value()
    if configured:
        return configured.encode()
    path = settings.home / PEPPER_FILE
    try:
        return path.read_text(encoding="utf-8").strip().encode()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32)
    # O_EXCL: two services starting together agree on the first key written.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text(encoding="utf-8").strip().encode()
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(key + "\n")
    log.info("generated the subject id key", extra={"path": str(path)})
    return key.encode()


def subject_id(user: str, pepper: bytes) -> str:
    """Keyed hash of an end user's identifier: 64 hex characters, the same for the same user.

    Surrounding spaces are ignored (``" ana@x.io"`` is ``"ana@x.io"``); case is kept, since user
    ids may be case-sensitive.

    >>> subject_id("ana@example.com", b"k") == subject_id(" ana@example.com ", b"k")
    True
    >>> subject_id("ana@example.com", b"k") != subject_id("ana@example.com", b"other")
    True
    >>> len(subject_id("ana", b"k"))
    64
    """
    return hmac.new(pepper, user.strip().encode("utf-8"), hashlib.sha256).hexdigest()
