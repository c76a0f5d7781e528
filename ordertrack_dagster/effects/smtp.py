"""SMTP for the run summary email (contract §7, §8: SMTP_*, EMAIL_*)."""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Collection, Mapping
from email.message import EmailMessage

from dagster import ConfigurableResource
from pydantic import Field

from ordertrack_dagster.effects.delivery import DeliveryError
from ordertrack_dagster.security.redaction import redact


class RecipientsRefused(DeliveryError):
    """The relay refused some recipients: the mail did not reach everyone, so it is not sent.

    `accepted` names those who got it, so a retry can go to the others alone. Transient only
    when every refusal was temporary (4xx); a 5xx (no such mailbox) is permanent.
    """

    def __init__(self, refused: Mapping[str, tuple[int, bytes]], accepted: list[str]) -> None:
        named = "; ".join(
            f"{address} ({code} {reply.decode(errors='replace')})"
            for address, (code, reply) in refused.items()
        )
        transient = all(400 <= code < 500 for code, _ in refused.values())
        super().__init__(redact(f"SMTP refused recipients: {named}"), transient=transient)
        self.accepted = accepted


class SmtpResource(ConfigurableResource):
    """The mail relay; logs in only when a password is set (a local relay needs none)."""

    host: str | None = Field(default=None, description="SMTP_HOST")
    port: int = Field(default=587, description="SMTP_PORT")
    sender: str | None = Field(default=None, description="EMAIL_SENDER (also the login)")
    password: str | None = Field(default=None, description="EMAIL_PASSWORD")
    recipients: str = Field(default="", description="EMAIL_RECIPIENTS, comma-separated")
    starttls: bool = Field(default=True, description="SMTP_STARTTLS")
    timeout_seconds: float = Field(default=30.0)

    def recipient_list(self) -> list[str]:
        return [address.strip() for address in self.recipients.split(",") if address.strip()]

    def send(self, subject: str, text: str, html: str, skip: Collection[str] = ()) -> None:
        """One multipart/alternative message (plain text and HTML, redacted) to every
        recipient not in `skip` (those an earlier attempt reached). Any refused recipient
        raises `RecipientsRefused`: smtplib returns a partial refusal instead of raising."""
        every = self.recipient_list()
        if not (self.host and self.sender and every):
            raise DeliveryError("SMTP_HOST, EMAIL_SENDER or EMAIL_RECIPIENTS is not set")
        recipients = [address for address in every if address not in skip]
        if not recipients:
            return
        message = EmailMessage()
        message["Subject"] = redact(subject)
        message["From"] = self.sender
        message["To"] = ", ".join(every)
        message.set_content(redact(text))
        message.add_alternative(redact(html), subtype="html")
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout_seconds) as smtp:
                if self.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if self.password:
                    smtp.login(self.sender, self.password)
                refused = smtp.send_message(message, to_addrs=recipients)
        except smtplib.SMTPRecipientsRefused as error:
            raise RecipientsRefused(error.recipients, []) from None
        except (smtplib.SMTPException, OSError) as error:
            raise DeliveryError(
                redact(f"SMTP {self.host}:{self.port}: {type(error).__name__}: {error}")
            ) from None
        if refused:
            raise RecipientsRefused(refused, [a for a in recipients if a not in refused])
