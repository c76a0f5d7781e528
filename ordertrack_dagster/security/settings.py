"""Settings checked when the code location loads, before any run can use them.

A token, password or URL with a line break, a control character or surrounding whitespace
is refused: such a value ends up in an HTTP header, where the HTTP library refuses it with
an error that quotes the whole header (the secret included). With `ENV=PROD` the location
fails closed: plain-text transport (an `http://` courier, CRM or Slack URL, an SMTP login
without TLS, a MongoDB URI without a verified TLS connection, a Dagster PostgreSQL storage
that does not check the server's certificate), unsigned CRM webhooks and unencrypted tokens
are refused, each unless its own override is set, and every use of an override is logged.
Errors name the setting, never its value.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import yaml

from ordertrack_dagster.security.redaction import (
    SECRET_SETTINGS,
    declare_secret_settings,
    install_log_redaction,
    install_stream_redaction,
)
from ordertrack_dagster.security.tokens import STATE_KEY, TokenCipher

#: Set to `true` to allow plain-text transport with `ENV=PROD` (a TLS-terminating sidecar).
INSECURE_OVERRIDE = "ORDERTRACK_ALLOW_INSECURE_TRANSPORT"
#: Set to `true` to send CRM webhooks without a signature with `ENV=PROD`.
UNSIGNED_WEBHOOKS_OVERRIDE = "ORDERTRACK_ALLOW_UNSIGNED_CRM_WEBHOOKS"
#: Set to `true` to keep courier and CRM tokens unencrypted in MongoDB with `ENV=PROD`.
PLAIN_TOKENS_OVERRIDE = "ORDERTRACK_ALLOW_NO_STATE_KEY"
#: Set to `true` to reach MongoDB without a verified TLS connection with `ENV=PROD`.
MONGODB_TLS_OVERRIDE = "ORDERTRACK_ALLOW_MONGODB_WITHOUT_TLS"
#: Set to `true` to accept a Dagster PostgreSQL storage that does not verify its server.
POSTGRES_TLS_OVERRIDE = "ORDERTRACK_ALLOW_POSTGRES_WITHOUT_CERT_CHECK"
#: libpq's only mode that checks both the certificate chain and the host name.
POSTGRES_VERIFIED_SSLMODE = "verify-full"

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
#: Settings that must be a number above 0 (0 would, for the CRM's key horizon, dead-letter
#: every webhook before its first call).
POSITIVE_NUMBERS = ("CRM_IDEMPOTENCY_HOURS",)
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


def _transport_problems(env: Mapping[str, str], names: SettingNames) -> list[str]:
    problems = [
        f"{name} uses http:// with ENV=PROD (TLS required)"
        for name in names.tls_urls
        if urlsplit(env.get(name, "").strip()).scheme == "http"
    ]
    if env.get("EMAIL_PASSWORD") and not flag(env, "SMTP_STARTTLS", default=True):
        problems.append(
            "SMTP login (EMAIL_PASSWORD) without TLS (SMTP_STARTTLS=false) with ENV=PROD"
        )
    return problems


def _unsigned_webhook_problems(env: Mapping[str, str], names: SettingNames) -> list[str]:
    """A cancel webhook the CRM cannot authenticate: anyone on its path could forge one."""
    secrets = [part for part in env.get("CRM_WEBHOOK_SECRET", "").split(",") if part.strip()]
    if env.get("CRM_WEBHOOK_URL", "").strip() and not secrets:
        return ["CRM_WEBHOOK_URL is set without CRM_WEBHOOK_SECRET: webhooks would be unsigned"]
    return []


def _plain_token_problems(env: Mapping[str, str], names: SettingNames) -> list[str]:
    if not env.get(STATE_KEY, "").strip():
        return [f"{STATE_KEY} is not set: courier and CRM tokens would be stored unencrypted"]
    return []


def mongodb_tls_problem(uri: str) -> str | None:
    """Why a MongoDB URI does not give a verified TLS connection, or None when it does.

    `mongodb+srv://` turns TLS on unless the URI turns it off; `mongodb://` needs `tls=true`
    (or its alias `ssl=true`); an option that skips the certificate or host-name check is as
    bad as no TLS (anyone in the path can present a certificate)."""
    parts = urlsplit(uri)
    options = {key.lower(): value.lower() for key, value in parse_qsl(parts.query)}
    tls = options.get("tls", options.get("ssl"))
    enabled = tls in _TRUE if tls is not None else parts.scheme == "mongodb+srv"
    if not enabled:
        return "MONGODB_URI does not turn TLS on (tls=true, or a mongodb+srv:// URI)"
    unchecked = ("tlsinsecure", "tlsallowinvalidcertificates", "tlsallowinvalidhostnames")
    skipped = [name for name in unchecked if options.get(name) in _TRUE]
    if skipped:
        return f"MONGODB_URI skips the server's certificate check ({', '.join(skipped)})"
    return None


def _mongodb_tls_problems(env: Mapping[str, str], names: SettingNames) -> list[str]:
    uri = env.get("MONGODB_URI", "").strip()
    problem = mongodb_tls_problem(uri) if uri else None
    return [problem] if problem else []


def postgres_tls_problem(
    instance: Mapping[str, Any], where: str, fallback_sslmode: str | None = None
) -> str | None:
    """Why a Dagster instance's PostgreSQL storage does not verify its server, or None.

    `sslmode=require` encrypts but accepts any certificate, so a man in the middle reads the
    runs' events and the database password; only `verify-full` checks the chain and the
    host name. Without `sslmode` in the file, libpq takes `PGSSLMODE` from the environment
    (`fallback_sslmode`). `where` names the setting in the message."""
    postgres = (instance.get("storage") or {}).get("postgres")
    if not postgres:
        return None  # not a PostgreSQL instance (a test's or a developer's SQLite)
    if "postgres_url" in postgres:
        url = postgres["postgres_url"]
        params = dict(parse_qsl(urlsplit(url if isinstance(url, str) else "").query))
    else:
        params = (postgres.get("postgres_db") or {}).get("params") or {}
    sslmode = params.get("sslmode") or fallback_sslmode
    if sslmode != POSTGRES_VERIFIED_SSLMODE:
        return (
            f"{where} sslmode is {sslmode or 'unset'} (nor PGSSLMODE), not "
            f"{POSTGRES_VERIFIED_SSLMODE}: the PostgreSQL server's certificate is not checked"
        )
    return None


def _postgres_tls_problems(env: Mapping[str, str], names: SettingNames) -> list[str]:
    """The instance this process belongs to ($DAGSTER_HOME/dagster.yaml), when it has one."""
    home = env.get("DAGSTER_HOME", "").strip()
    path = Path(home) / "dagster.yaml"
    if not home or not path.is_file():
        return []
    instance = yaml.safe_load(path.read_text()) or {}
    where = "storage.postgres of $DAGSTER_HOME/dagster.yaml:"
    problem = postgres_tls_problem(instance, where, env.get("PGSSLMODE", "").strip() or None)
    return [problem] if problem else []


@dataclass(frozen=True)
class ProdRule:
    """A way production fails closed, and the setting that opens it on purpose."""

    override: str
    #: the problems found in the settings (given the names of those checked)
    problems: Callable[[Mapping[str, str], SettingNames], list[str]]


PROD_RULES = (
    ProdRule(INSECURE_OVERRIDE, _transport_problems),
    ProdRule(UNSIGNED_WEBHOOKS_OVERRIDE, _unsigned_webhook_problems),
    ProdRule(PLAIN_TOKENS_OVERRIDE, _plain_token_problems),
    ProdRule(MONGODB_TLS_OVERRIDE, _mongodb_tls_problems),
    ProdRule(POSTGRES_TLS_OVERRIDE, _postgres_tls_problems),
)


def _prod_problems(env: Mapping[str, str], names: SettingNames) -> tuple[list[str], list[str]]:
    """(refused, allowed by an override) under `ENV=PROD`."""
    refused: list[str] = []
    allowed: list[str] = []
    for rule in PROD_RULES:
        found = rule.problems(env, names)
        if flag(env, rule.override, default=False):
            allowed += [f"allowed by {rule.override}=true: {problem}" for problem in found]
        else:
            refused += [f"{problem} (override: {rule.override})" for problem in found]
    return refused, allowed


def _positive_number_problem(name: str, value: str) -> str | None:
    try:
        number = float(value)
    except ValueError:
        return f"{name} is not a number"
    return None if number > 0 and number != float("inf") else f"{name} must be above 0"


def validate_settings(env: Mapping[str, str], names: SettingNames) -> list[str]:
    """Raise SettingsError listing every unusable setting; return the warnings to log."""
    problems = [
        problem
        for name in names.checked
        if env.get(name) and (problem := _shape_problem(name, env[name], names.urls)) is not None
    ]
    problems += [
        problem
        for name in POSITIVE_NUMBERS
        if env.get(name, "").strip()
        and (problem := _positive_number_problem(name, env[name].strip())) is not None
    ]
    warnings: list[str] = []
    if is_prod(env):
        refused, warnings = _prod_problems(env, names)
        problems += refused
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
    redact every log record and everything written to stdout and stderr (and each of
    `names.secrets`) from then on."""
    for warning in validate_settings(env, names):
        logging.getLogger("ordertrack").warning(warning)
    declare_secret_settings(names.secrets)
    install_log_redaction()
    install_stream_redaction()
