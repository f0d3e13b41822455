"""The dashboard's front-end files: vendored ones unchanged from the pinned npm releases (their
SHA-256 as recorded, their licences beside them), and nothing loaded from elsewhere."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import app.dashboard

DASHBOARD = Path(app.dashboard.__file__).parent
STATIC = DASHBOARD / "static"
VENDOR = STATIC / "vendor"


def test_vendored_files_match_their_recorded_sha256_and_carry_their_licence() -> None:
    manifest = json.loads((VENDOR / "manifest.json").read_text())
    recorded = set()
    for package in manifest["packages"]:
        assert re.fullmatch(r"\d+\.\d+\.\d+", package["version"]), package  # pinned
        assert (VENDOR / package["licence_file"]).read_text().strip()
        assert package["tarball"].startswith("https://registry.npmjs.org/")
        for name, meta in package["files"].items():
            assert package["version"] in name  # the version is in the URL the pages use
            digest = hashlib.sha256((VENDOR / name).read_bytes()).hexdigest()
            assert digest == meta["sha256"], name
            recorded.add(name)
            recorded.add(package["licence_file"])
    on_disk = {path.name for path in VENDOR.iterdir()} - {"manifest.json"}
    assert on_disk == recorded  # nothing vendored without a record


def test_templates_use_only_files_that_exist_and_nothing_from_elsewhere() -> None:
    used = set()
    for template in (DASHBOARD / "templates").glob("*.html"):
        text = template.read_text()
        used.update(re.findall(r"static\('([^']+)'\)", text))
        assert not re.search(r"(src|href)=\"(https?:)?//", text), template.name
    assert used
    for name in used:
        assert (STATIC / name).is_file(), name
    for own in ("dashboard.js", "dashboard.css"):
        assert not re.search(r"https?://|url\(", (STATIC / own).read_text()), own
