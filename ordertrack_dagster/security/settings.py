"""Settings checked when the code location loads, before any run can use them.

A token, password or URL with a line break, a control character or surrounding whitespace
is refused: such a value ends up in an HTTP header, where the HTTP library refuses it with
an error that quotes the whole header (the secret included). With `ENV=PROD`, plain-text
transport is refused too: an `http://` courier, CRM or Slack URL, and an SMTP login without
TLS. Errors name the setting, never its value.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from ordertrack_dagster.security.redaction import (
    SECRET_SETTINGS,
    declare_secret_settings,
    install_log_redaction,
)
from ordertrack_dagster.security.tokens import STATE_KEY, TokenCipher

#: Set to `true` to allow plain-text transport with `ENV=PROD` (a TLS-terminating sidecar).
INSECURE_OVERRIDE = "ORDERTRACK_ALLOW_INSECURE_TRANSPORT"

#: URLs that must use TLS in production (the couriers' come from their descriptions).
TLS_URLS = ("CRM_AUTH_URL", "CRM_WEBHOOK_URL", "SLACK_API_URL")
#: URLs checked for their shape only.
PLAIN_URLS = ("AWS_ENDPOINT_URL", "DAGSTER_WEBSERVER_URL")
#: Values that travel in headers or login bodies besides the secrets.
IDENTITIES = (
    "CRM_CLIENT_ID",
    "AWS_ACCESS_KEY_ID",
    "EMAIL_SENDER",
    "SMTP_HOST",
    "MONGODB_URI",
)


@dataclass(frozen=True)
class SettingNames:
    """The settings checked at load, by what they hold: the platform's (`PLATFORM_SETTINGS`)
    joined with the couriers' (`ordertrack_dagster.settings.SETTING_NAMES`, from their
    descriptions, since this layer imports nothing above it)."""

    secrets: tuple[str, ...] = ()
    tls_urls: tuple[str, ...] = ()
    identities: tuple[str, ...] = ()

    def __or__(self, other: SettingNames) -> SettingNames:
        return SettingNames(
            self.secrets + other.secrets,
            self.tls_urls + other.tls_urls,
            self.identities + other.identities,
        )

    @property
    def urls(self) -> tuple[str, ...]:
        return (*self.tls_urls, *PLAIN_URLS)

    @property
    def checked(self) -> tuple[str, ...]:
        return (*self.secrets, *self.urls, *self.identities)


PLATFORM_SETTINGS = SettingNames(SECRET_SETTINGS, TLS_URLS, IDENTITIES)
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class SettingsError(ValueError):
    """A setting is unusable; the message names each one and why, never a value."""


def flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    """The one reading of a yes/no setting: a word that is neither stops the load, so a typo
    in SMTP_STARTTLS cannot turn TLS off (or on) by accident."""
    value = env.get(name, "").strip().lower()
    if not value:
        return default
    if value not in _TRUE | _FALSE:
        raise SettingsError(f"{name} must be one of {', '.join(sorted(_TRUE | _FALSE))}")
    return value in _TRUE


def is_prod(env: Mapping[str, str]) -> bool:
    return env.get("ENV", "").strip() == "PROD"


def _shape_problem(name: str, value: str, urls: tuple[str, ...]) -> str | None:
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
        return f"{name} contains a line break or another control character"
    if value != value.strip():
        return f"{name} has leading or trailing whitespace"
    if name in urls:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return f"{name} is not an http(s) URL with a host"
    return None


def _transport_problems(env: Mapping[str, str], tls_urls: tuple[str, ...]) -> list[str]:
    problems = [
        f"{name} uses http:// with ENV=PROD (TLS required; see {INSECURE_OVERRIDE})"
        for name in tls_urls
        if urlsplit(env.get(name, "").strip()).scheme == "http"
    ]
    if env.get("EMAIL_PASSWORD") and not flag(env, "SMTP_STARTTLS", default=True):
        problems.append(
            f"SMTP login (EMAIL_PASSWORD) without TLS (SMTP_STARTTLS=false) with ENV=PROD "
            f"(see {INSECURE_OVERRIDE})"
        )
    return problems


def validate_settings(env: Mapping[str, str], names: SettingNames) -> list[str]:
    """Raise SettingsError listing every unusable setting; return the warnings to log."""
    problems = [
        problem
        for name in names.checked
        if env.get(name) and (problem := _shape_problem(name, env[name], names.urls)) is not None
    ]
    warnings: list[str] = []
    if is_prod(env):
        transport = _transport_problems(env, names.tls_urls)
        if flag(env, INSECURE_OVERRIDE, default=False):
            warnings += [f"allowed by {INSECURE_OVERRIDE}: {problem}" for problem in transport]
        else:
            problems += transport
        if not env.get(STATE_KEY):
            warnings.append(
                f"{STATE_KEY} is not set: courier and CRM tokens are stored unencrypted "
                "in ordertrack_state"
            )
    if env.get(STATE_KEY):
        try:
            TokenCipher(env[STATE_KEY])
        except ValueError:
            problems.append(f"{STATE_KEY} is not a Fernet key (32 url-safe base64 bytes)")
    if problems:
        raise SettingsError("unusable settings:\n- " + "\n- ".join(problems))
    return warnings


def load_settings(env: Mapping[str, str], names: SettingNames) -> None:
    """What the code location does first: refuse unusable settings, log the warnings, and
    redact every log record (and each of `names.secrets`) from then on."""
    for warning in validate_settings(env, names):
        logging.getLogger("ordertrack").warning(warning)
    declare_secret_settings(names.secrets)
    install_log_redaction()
