"""Skip fuse_overlay tests whose capabilities are missing, once per session, with the reason."""

from __future__ import annotations

import pytest
from fo_support import fuse_reason, userns_reason


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("requires_userns"):
        reason = userns_reason()
        if reason:
            pytest.skip(reason)
    if item.get_closest_marker("requires_fuse"):
        reason = fuse_reason()
        if reason:
            pytest.skip(reason)
