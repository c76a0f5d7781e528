"""One redaction step for every text that leaves the process (contract §8).

The secrets are the values of the secret settings (and of any setting whose name says it is
one), the MongoDB password inside `MONGODB_URI`, and the tokens this process received at run
time (courier JWTs, the CRM's access token), which it learns through `remember_secret`.
Each secret is also matched in the forms a library may print it in: stripped of surrounding
whitespace, escaped the way `repr` escapes it (`b'Token abc\\n'`), and cut at its line breaks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping
from functools import lru_cache
from typing import Any, TextIO
from urllib.parse import unquote, urlsplit

import httpx
import pandas as pd
from pandas.api.types import is_object_dtype, is_string_dtype

#: The platform's settings that hold a secret; the couriers' are declared at load from their
#: descriptions (`declare_secret_settings`), and names are also matched by `_SECRET_NAME_PARTS`.
SECRET_SETTINGS = (
    "CRM_CLIENT_SECRET",
    "CRM_WEBHOOK_SECRET",
    "EMAIL_PASSWORD",
    "SLACK_TOKEN",
    "AWS_SECRET_ACCESS_KEY",
    "ORDERTRACK_STATE_KEY",
)
_SECRET_NAME_PARTS = ("TOKEN", "PASSWORD", "SECRET")
#: Shorter values are not secrets worth the false matches (e.g. a port number).
MIN_SECRET_CHARS = 4
#: Words that are part of every JSON answer: masking them would break the answer, not hide a
#: secret (a setting with such a value is no secret anyway).
_NEVER_SECRET = frozenset({"true", "false", "null", "none"})
#: Columns that identify an order or a run: they come from our database or the courier's keys,
#: never from a credential, and the next step looks orders up by them.
IDENTIFIER_COLUMNS = frozenset({"order_oid", "order_id", "tracking_key", "flow", "run_id"})
MASK = "***"

_learned: set[str] = set()
_learned_lock = threading.Lock()
_declared: set[str] = set(SECRET_SETTINGS)


def declare_secret_settings(names: Iterable[str]) -> None:
    """Settings that hold a secret besides the platform's (the couriers', from their
    descriptions): their values are redacted from then on."""
    _declared.update(names)


def remember_secret(value: str | None) -> None:
    """A token received at run time: redacted from everything this process sends from now on."""
    if value and len(value.strip()) >= MIN_SECRET_CHARS:
        with _learned_lock:
            _learned.add(value)


def is_secret_setting(name: str) -> bool:
    upper = name.upper()
    return name in _declared or any(part in upper for part in _SECRET_NAME_PARTS)


def configured_secrets(env: Mapping[str, str]) -> list[str]:
    """The secret values of an environment (not the learned tokens)."""
    values = [value for name, value in env.items() if is_secret_setting(name)]
    # a list of secrets (keys or webhook secrets during a rotation): each one on its own too
    values += [part.strip() for value in values if "," in value for part in value.split(",")]
    mongo_password = urlsplit(env.get("MONGODB_URI", "")).password
    if mongo_password:
        values += [mongo_password, unquote(mongo_password)]
    return values


def _forms(secret: str) -> set[str]:
    """The secret as given, stripped, repr-escaped, and each line of it."""
    escaped = secret.encode("unicode_escape").decode("ascii")
    forms = {secret, secret.strip(), escaped, escaped.strip()}
    forms.update(line.strip() for line in secret.splitlines())
    return {
        form
        for form in forms
        if len(form) >= MIN_SECRET_CHARS and form.lower() not in _NEVER_SECRET
    }


class Redactor:
    """Replaces every form of every secret by `***` in text, nested values and DataFrames."""

    def __init__(self, secrets: Iterable[str]):
        forms = set().union(*(_forms(secret) for secret in secrets if secret))
        self._forms = sorted(forms, key=len, reverse=True)  # the longest form wins an overlap
        self._pattern = re.compile("|".join(map(re.escape, self._forms))) if forms else None

    def found_in(self, text: str) -> bool:
        """A plain substring search per form: far faster than the regex on large text."""
        return any(form in text for form in self._forms)

    def text(self, text: str) -> str:
        if self._pattern is None or not text or not self.found_in(text):
            return text
        return self._pattern.sub(MASK, text)

    def value(self, value: Any) -> Any:
        """Strings inside dicts, lists and tuples redacted; other values as they are."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {key: self.value(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.value(item) for item in value)
        return value

    def columns_to_redact(self, frame: pd.DataFrame) -> list[str]:
        """The text columns holding a secret, identifiers aside (IDENTIFIER_COLUMNS)."""
        if self._pattern is None:
            return []
        return [
            column
            for column in frame.columns
            if column not in IDENTIFIER_COLUMNS
            and (is_object_dtype(frame[column].dtype) or is_string_dtype(frame[column].dtype))
            # cell by cell: the column joined would be a second copy of all its text
            and any(self.found_in(value) for value in frame[column] if isinstance(value, str))
        ]

    def frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Text columns redacted, identifiers kept; the frame itself when nothing matched."""
        changed = {
            column: frame[column].map(self.value) for column in self.columns_to_redact(frame)
        }
        return frame.assign(**changed) if changed else frame


@lru_cache(maxsize=8)
def _redactor(secrets: frozenset[str]) -> Redactor:
    return Redactor(secrets)


def redactor(env: Mapping[str, str] | None = None) -> Redactor:
    """The redactor of this environment (the process's by default) and the learned tokens."""
    with _learned_lock:
        learned = set(_learned)
    return _redactor(frozenset(configured_secrets(os.environ if env is None else env)) | learned)


def http_error_text(error: httpx.HTTPError) -> str:
    """What to say about a failed request, redacted. A header httpx refuses (a credential
    with a line break) is quoted whole in its message: never repeat that message."""
    if isinstance(error, httpx.LocalProtocolError):
        return "the request could not be formed (a credential with a line break or space?)"
    return redact(f"{type(error).__name__}: {error}")


def redact(text: str) -> str:
    """`text` without any secret of the process's environment or any learned token."""
    return redactor().text(text)


class RedactedFailure(Exception):
    """An error whose text held a secret, re-raised with the secret masked and without its
    chain (Dagster stores a failed step's message, cause and context in the event log and
    the failure alert quotes it)."""


def _chain_text(error: BaseException) -> str:
    """The messages of an exception and of every exception it was raised from or during."""
    texts: list[str] = []
    current: BaseException | None = error
    while current is not None and len(texts) < 32:
        texts.append(f"{type(current).__name__}: {current}")
        current = current.__cause__ or current.__context__
    return "\n".join(texts)


@contextlib.contextmanager
def redacted_failures() -> Iterator[None]:
    """Let an exception through unless its text, or its chain's, holds a secret; then raise
    a `RedactedFailure` with the masked text instead, its chain cut."""
    try:
        yield
    except Exception as error:
        text = _chain_text(error)
        if not redactor().found_in(text):
            raise
        raise RedactedFailure(redact(text)) from None


def _redact_record(record: logging.LogRecord) -> None:
    """Mask secrets in the message, the traceback (`exc_info`, rendered now and kept as the
    `exc_text` every formatter prints instead) and the stack."""
    message = record.getMessage()
    clean = redact(message)
    if clean is not message or not isinstance(record.msg, str):
        record.msg, record.args = clean, ()
    if record.exc_info and record.exc_info[1] is not None:
        rendered = logging.Formatter().formatException(record.exc_info)
        if redactor().found_in(rendered):
            record.exc_text, record.exc_info = redact(rendered), None
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


class RedactingStream:
    """A text stream that masks secrets in what is written to it (`print` and libraries
    writing to stdout or stderr). Each write is redacted whole: a secret split across two
    writes would pass, which `print` never does."""

    redacting = True

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact(text))
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def install_stream_redaction() -> None:
    """Redact what this process writes to `sys.stdout` and `sys.stderr` from now on
    (Dagster captures both into a run's compute logs). Idempotent."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not getattr(stream, "redacting", False):
            setattr(sys, name, RedactingStream(stream))


def install_log_redaction() -> None:
    """Redact every log record this process makes from now on, Dagster's run logs included
    (`context.log` builds its records through the standard factory): the message, a logged
    traceback and the stack. Idempotent."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "redacting", False):
        return

    def redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        _redact_record(record)
        return record

    redacting_factory.redacting = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(redacting_factory)
