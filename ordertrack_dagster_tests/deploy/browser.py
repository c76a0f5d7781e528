"""Screenshots with the system's headless Chromium (Debian package `chromium`)."""

import shutil
import subprocess
from pathlib import Path

from ordertrack_dagster_tests.deploy.local_deployment import PROJECT_ROOT

DOCS_IMAGES = PROJECT_ROOT / "docs" / "images"
# No network but the page's own, no first-run or sync traffic, a profile of its own.
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--window-size=1440,900",
]  # fmt: skip
# The UI is a single-page app: give its queries time to answer before the picture is taken.
RENDER_BUDGET_MS = 20_000


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "no Chromium: apt-get install -y chromium"
    return found


def _render(url: str, profile: Path, *action: str) -> str:
    """Load `url` in a fresh profile, let the app render, then do `action`; its stdout."""
    profile.mkdir()
    return subprocess.run(
        [chromium(), *FLAGS, f"--user-data-dir={profile}",
         f"--virtual-time-budget={RENDER_BUDGET_MS}", *action, url],
        check=True, capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip


def screenshot(url: str, target: Path, scratch: Path) -> Path:
    """Load `url` and save what it shows as a PNG at `target`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    _render(url, scratch / f"profile-{target.stem}", f"--screenshot={target}")
    return target


def rendered_html(url: str, scratch: Path, name: str) -> str:
    """The page's DOM once the app has rendered it: what a reader of the page sees, as text."""
    return _render(url, scratch / f"profile-dom-{name}", "--dump-dom")
