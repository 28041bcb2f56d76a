"""The malloc setting long experiment runs apply (`dkvb_jax._malloc`)."""

import platform
import sys

import pytest

from dkvb_jax import _malloc


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="mallopt is glibc's",
)
def test_applies_on_glibc():
    assert _malloc.keep_freed_heap() is True


def test_does_nothing_off_linux(monkeypatch):
    monkeypatch.setattr(_malloc.sys, "platform", "darwin")
    assert _malloc.keep_freed_heap() is False
