"""The README's test prerequisites name every system package the CI script installs (issue 21)."""

from __future__ import annotations

import re

from conftest import REPO


def test_readme_lists_every_system_package_of_the_ci_script():
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    block = re.search(r"APT_PACKAGES=\((.*?)\)", ci, re.S)
    assert block, "APT_PACKAGES not found in .ci/run"
    packages = block.group(1).split()
    assert "xvfb" in packages and len(packages) > 5
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    install = [line for line in readme.splitlines() if line.startswith("apt-get install")]
    assert install, "the README has no apt-get install line"
    listed = set(" ".join(install).split())
    assert [p for p in packages if p not in listed] == []
