"""Tokens at rest: Fernet-encrypted in `ordertrack_state` when ORDERTRACK_STATE_KEY is set.

Several comma-separated keys rotate: the first encrypts, all of them decrypt. A stored token
that cannot be read (no key, another key, plain text from before encryption was turned on
when it must be sealed) counts as absent: the next login or token request replaces it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

#: Fernet key(s) for tokens in `ordertrack_state`, comma-separated, the first one encrypting.
STATE_KEY = "ORDERTRACK_STATE_KEY"
SEALED_PREFIX = "fernet:"


class TokenCipher:
    def __init__(self, keys: str | None):
        parts = [key.strip() for key in (keys or "").split(",") if key.strip()]
        self._fernet = MultiFernet([Fernet(key) for key in parts]) if parts else None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TokenCipher:
        return cls((os.environ if env is None else env).get(STATE_KEY))

    @property
    def sealing(self) -> bool:
        return self._fernet is not None

    def seal(self, token: str) -> str:
        if self._fernet is None:
            return token
        return SEALED_PREFIX + self._fernet.encrypt(token.encode()).decode("ascii")

    def open(self, stored: str) -> str | None:
        """The token, or None when it cannot be read with the keys at hand."""
        if not stored.startswith(SEALED_PREFIX):
            return None if self.sealing else stored
        if self._fernet is None:
            return None
        try:
            return self._fernet.decrypt(stored[len(SEALED_PREFIX) :].encode()).decode()
        except InvalidToken:
            return None
