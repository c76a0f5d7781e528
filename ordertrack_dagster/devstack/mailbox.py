"""A local SMTP server that keeps every message it receives as a `.eml` file.

The email summary is sent by the product's real SMTP code; this server stands in for the
mail relay so the tests and the demo can read what would have been delivered. Plain SMTP,
no TLS; a client that logs in (AUTH LOGIN or PLAIN) must give the configured password,
or any password when none is configured.

Run it with `python -m ordertrack_dagster.devstack.mailbox --port P --directory DIR`.
`--refuse ADDRESS` (repeatable) makes it refuse that recipient with `550`, as a relay does
for an unknown mailbox, so a partial refusal can be tried.
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import threading
import time
from collections.abc import Iterable
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any, cast

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

_sequence = itertools.count()


class MailboxHandler:
    """Writes each message, with its envelope as `X-Envelope-*` headers, to `directory`;
    refuses the recipients in `refuse` (case-insensitively)."""

    def __init__(self, directory: Path, refuse: Iterable[str] = ()) -> None:
        self.directory = directory
        self.refuse = {address.lower() for address in refuse}
        directory.mkdir(parents=True, exist_ok=True)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list
    ) -> str:
        if address.lower() in self.refuse:
            return "550 5.1.1 No such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or envelope.content or b""
        if isinstance(content, str):
            content = content.encode()
        envelope_headers = (
            f"X-Envelope-From: {envelope.mail_from}\r\n"
            f"X-Envelope-To: {', '.join(envelope.rcpt_tos)}\r\n"
        ).encode()
        name = f"{time.time_ns():020d}-{next(_sequence):06d}.eml"
        partial = self.directory / f".{name}.partial"
        partial.write_bytes(envelope_headers + content)
        # A reader never sees a half-written message: the file appears whole or not at all.
        os.replace(partial, self.directory / name)
        return "250 Message accepted for delivery"


class _PasswordAuthenticator:
    """Accepts a login with the configured password (any password when none is set)."""

    def __init__(self, password: str | None) -> None:
        self._password = password

    def __call__(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        accepted = not self._password or auth_data.password.decode() == self._password
        return AuthResult(success=accepted)


def mailbox_controller(
    directory: Path,
    host: str = "127.0.0.1",
    port: int = 0,
    password: str | None = None,
    refuse: Iterable[str] = (),
) -> Controller:
    """An SMTP server (not yet started) that stores what it receives in `directory`."""
    return Controller(
        MailboxHandler(directory, refuse),
        hostname=host,
        port=port,
        authenticator=_PasswordAuthenticator(password),
        auth_require_tls=False,
    )


def read_mailbox(directory: Path) -> list[EmailMessage]:
    """Every message received so far, oldest first."""
    parser = BytesParser(policy=policy.default)
    return [
        cast(EmailMessage, parser.parsebytes(path.read_bytes()))
        for path in sorted(Path(directory).glob("*.eml"))
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--directory", type=Path, required=True)
    parser.add_argument("--password", default=None)
    parser.add_argument("--refuse", action="append", default=[], help="a recipient to refuse")
    args = parser.parse_args(argv)

    controller = mailbox_controller(
        args.directory, args.host, args.port, args.password, args.refuse
    )
    stopped = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopped.set())
    controller.start()
    try:
        stopped.wait()
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
