"""The one apt-get helper every layer uses to install what the host lacks."""
from __future__ import annotations

import pytest

from infra import debian


def test_installed_packages_are_not_reinstalled():
    assert debian.missing(["dpkg", "apt"]) == []
    assert debian.ensure(["dpkg", "apt"], ValueError) == []


def test_a_package_apt_cannot_install_raises_the_callers_error_naming_it():
    with pytest.raises(ValueError, match="apt-get install failed while installing pilothouse-no-such-package"):
        debian.ensure(["dpkg", "pilothouse-no-such-package"], ValueError)
