"""SMTP for the run summary email (contract §7, §8: SMTP_*, EMAIL_*)."""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage

from dagster import ConfigurableResource
from pydantic import Field

from ordertrack_dagster.effects.delivery import DeliveryError
from ordertrack_dagster.security.redaction import redact


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

    def send(self, subject: str, text: str, html: str) -> None:
        """One multipart/alternative message (plain text and HTML, redacted) to every
        recipient."""
        recipients = self.recipient_list()
        if not (self.host and self.sender and recipients):
            raise DeliveryError("SMTP_HOST, EMAIL_SENDER or EMAIL_RECIPIENTS is not set")
        message = EmailMessage()
        message["Subject"] = redact(subject)
        message["From"] = self.sender
        message["To"] = ", ".join(recipients)
        message.set_content(redact(text))
        message.add_alternative(redact(html), subtype="html")
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout_seconds) as smtp:
                if self.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if self.password:
                    smtp.login(self.sender, self.password)
                smtp.send_message(message)
        except (smtplib.SMTPException, OSError) as error:
            raise DeliveryError(
                redact(f"SMTP {self.host}:{self.port}: {type(error).__name__}: {error}")
            ) from None
