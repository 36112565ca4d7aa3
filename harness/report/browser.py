"""Headless Chromium on a local page: its DOM after scripts ran, or a screenshot. Used to check the HTML
leaderboard in a real browser and to make the README's screenshot. Nothing is fetched from the network."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--virtual-time-budget=3000")


def find_chromium() -> str | None:
    return next((path for name in NAMES if (path := shutil.which(name))), None)


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    chromium = find_chromium()
    if chromium is None:
        raise FileNotFoundError("chromium not found (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:  # a fresh profile: no state between runs
        done = subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                              text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"chromium failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return done


def page_url(path: Path, fragment: str = "") -> str:
    return Path(path).resolve().as_uri() + (f"#{fragment}" if fragment else "")


def dump_dom(url: str, timeout: float = 60) -> str:
    """The page's DOM after its scripts ran (serialised HTML)."""
    return _run(["--dump-dom", url], timeout).stdout


def screenshot(url: str, png: Path, size: tuple[int, int] = (1280, 1250), timeout: float = 60) -> Path:
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    _run([f"--screenshot={png}", f"--window-size={size[0]},{size[1]}", url], timeout)
    if not png.is_file():
        raise RuntimeError(f"chromium wrote no screenshot to {png}")
    return png
