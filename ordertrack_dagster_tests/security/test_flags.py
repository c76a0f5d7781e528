"""Yes/no settings have one reading (`security.settings.flag`): the settings check and the
resources built from the same environment agree on it, and an unknown word stops the load."""

import pytest

from ordertrack_dagster.security.settings import SettingsError, flag
from ordertrack_dagster.settings import build_resources


@pytest.mark.parametrize(
    ("value", "expected"),
    [("", True), ("true", True), (" ON ", True), ("1", True), ("false", False), ("Off", False)],
)
def test_a_flag_reads_the_usual_words(value, expected):
    assert flag({"SMTP_STARTTLS": value}, "SMTP_STARTTLS", default=True) is expected


@pytest.mark.parametrize("value", ["flase", "disabled", "2"])
def test_an_unknown_word_stops_the_load_by_name(value):
    with pytest.raises(SettingsError, match="SMTP_STARTTLS must be one of"):
        flag({"SMTP_STARTTLS": value}, "SMTP_STARTTLS", default=True)
    with pytest.raises(SettingsError, match="SMTP_STARTTLS"):
        build_resources({"SMTP_STARTTLS": value})


@pytest.mark.parametrize(("value", "starttls"), [("no", False), ("yes", True), ("", True)])
def test_the_smtp_resource_reads_starttls_as_the_settings_check_does(value, starttls):
    assert build_resources({"SMTP_STARTTLS": value})["smtp"].starttls is starttls
