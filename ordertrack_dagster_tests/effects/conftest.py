"""Fixtures of the effects tests."""

from collections.abc import Iterator

import pytest
from dagster import DagsterInstance

from ordertrack_dagster.devstack.mailbox import mailbox_controller
from ordertrack_dagster.devstack.stack import free_port


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    """The test's Dagster instance, shared by its runs as production's is, and entered so
    that definitions load against it rather than whatever an earlier test left current."""
    with DagsterInstance.ephemeral() as entered:
        yield entered


@pytest.fixture
def refusing_mailbox(tmp_path, stack_env):
    """The local mailbox, refusing one of the two configured recipients (a relay's 550)."""
    kept, refused = [a.strip() for a in stack_env["EMAIL_RECIPIENTS"].split(",")][:2]
    port = free_port()
    controller = mailbox_controller(tmp_path, port=port, refuse=[refused])
    controller.start()
    try:
        yield tmp_path, port, kept, refused
    finally:
        controller.stop()
