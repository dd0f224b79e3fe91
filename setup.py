"""The package build's one extra step: the demo, stats and session pages, built by npm.

Everything else about the package is in pyproject.toml. `rtc serve` serves its pages from
`rtc/pages/` when the installed package has them (a wheel), else from the checkout's `demo/`.

- The sdist carries the page sources (`demo/src`, `package.json`, `package-lock.json`, the
  HTML and CSS) and the bundle built from them (`demo/dist/`), so a wheel built from it needs
  no Node.
- A wheel built from a source checkout bundles `demo/src` afresh with npm (Node 20+), in a
  temporary copy: the checkout's `demo/node_modules` and `demo/dist` are never touched.
- Without npm such a build fails and says why; it never makes a wheel without pages.
- An editable install (`pip install -e .`, what `make setup` does) builds nothing: it serves
  the checkout's `demo/`, which `make` builds.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist
from setuptools.errors import ExecError

ROOT = Path(__file__).resolve().parent
DEMO = ROOT / "demo"
# What `rtc serve` serves: the pages and their stylesheet, beside the bundle in dist/.
PAGES = ("index.html", "stats.html", "session.html", "style.css")
BUNDLE = ("app.js", "app.js.map")
NO_NPM = (
    "building rtc-presence needs npm (Node.js 20 or later): the demo, stats and session pages' "
    "JavaScript is bundled from demo/src at build time. Install Node.js and npm (Debian: "
    "`apt-get install nodejs npm`) and build again, or install a wheel built elsewhere."
)


def bundle_pages(demo: Path, dist: Path) -> None:
    """Bundle `demo/src` with npm into `dist`, in a temporary copy of the demo's sources."""
    npm = shutil.which("npm")
    if npm is None:
        raise ExecError(NO_NPM)
    with tempfile.TemporaryDirectory(prefix="rtc-pages-") as scratch:
        work = Path(scratch)
        shutil.copytree(demo / "src", work / "src")
        for name in ("package.json", "package-lock.json"):
            shutil.copy2(demo / name, work / name)
        for command in (
            # The lock file pins every package; --prefer-offline reuses npm's cache.
            [npm, "ci", "--prefer-offline", "--no-audit", "--no-fund"],
            [npm, "run", "build"],
        ):
            result = subprocess.run(command, cwd=work, check=False)
            if result.returncode != 0:
                raise ExecError(f"{' '.join(command[1:])} failed (exit {result.returncode})")
        dist.mkdir(parents=True, exist_ok=True)
        for name in BUNDLE:
            shutil.copy2(work / "dist" / name, dist / name)


def from_sdist() -> bool:
    # An unpacked sdist has PKG-INFO at its root, and the bundle the sdist was made with.
    return (ROOT / "PKG-INFO").is_file() and all((DEMO / "dist" / n).is_file() for n in BUNDLE)


class BuildPages(build_py):
    """build_py, plus the pages in `rtc/pages/` (a non-editable build only)."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        pages = Path(self.build_lib) / "rtc" / "pages"
        shutil.rmtree(pages, ignore_errors=True)
        pages.mkdir(parents=True)
        for name in PAGES:
            shutil.copy2(DEMO / name, pages / name)
        if from_sdist():
            shutil.copytree(DEMO / "dist", pages / "dist")
        else:
            bundle_pages(DEMO, pages / "dist")


class SdistWithBundle(sdist):
    """sdist, plus `demo/dist/` bundled afresh from the sources it carries."""

    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        dist = Path(base_dir) / "demo" / "dist"
        if from_sdist():  # an sdist made from an sdist keeps its bundle
            shutil.copytree(DEMO / "dist", dist, dirs_exist_ok=True)
        else:
            bundle_pages(DEMO, dist)


setup(cmdclass={"build_py": BuildPages, "sdist": SdistWithBundle})
