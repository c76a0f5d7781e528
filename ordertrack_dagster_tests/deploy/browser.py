"""Screenshots with the system's headless Chromium (Debian package `chromium`)."""

import shutil
import subprocess
from collections.abc import Mapping
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


def _render(url: str, target: Path, profile: Path) -> str:
    """Load `url` in a fresh profile, let the app render, save what it shows as a PNG at
    `target`; the page's DOM then (what a reader of the page sees, as text)."""
    profile.mkdir()
    return subprocess.run(
        [chromium(), *FLAGS, f"--user-data-dir={profile}",
         f"--virtual-time-budget={RENDER_BUDGET_MS}", "--dump-dom", f"--screenshot={target}",
         url],
        check=True, capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip


def photograph(pages: Mapping[Path, str], scratch: Path) -> dict[Path, str]:
    """Each page (a PNG to write, its URL) in a Chromium of its own, one after another (side
    by side they starve each other on two cores, and a render can then hang); the DOM of
    each page, by its PNG."""
    doms = {}
    for target, url in pages.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        doms[target] = _render(url, target, scratch / f"profile-{target.stem}")
    return doms
