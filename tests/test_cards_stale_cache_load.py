"""``StaleCache.load`` on a missing path that looks local fails at once with "no such folder" (no Hub lookup)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from hf_corrector import StaleCache


@pytest.fixture
def no_hub(monkeypatch):
    """Any Hub lookup fails the test (the old code turned ``out/stale_cache`` into a Hub repo id with retries)."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"StaleCache.load went to the Hub: {args} {kwargs}")

    monkeypatch.setattr(StaleCache, "from_hub", classmethod(lambda cls, *a, **kw: refuse(*a, **kw)))


@pytest.mark.parametrize("relative", ["out/stale_cache", "./out/stale_cache", "out/run1/stale_cache"])
def test_missing_local_looking_cache_fails_at_once(tmp_path, monkeypatch, no_hub, relative):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()  # what trainer.save_model("out") leaves: the model, no cache
    start = time.monotonic()
    with pytest.raises(FileNotFoundError, match="no such folder") as info:
        StaleCache.load(relative)
    assert time.monotonic() - start < 2.0
    assert "stale cache" in str(info.value) and relative in str(info.value)


def test_missing_absolute_and_path_objects_fail_at_once(tmp_path, no_hub):
    for path in (str(tmp_path / "nope" / "stale_cache"), tmp_path / "nope", Path("~/no-such-cache-hfc-test")):
        with pytest.raises(FileNotFoundError, match="no such folder"):
            StaleCache.load(path)


def test_hub_ids_still_go_to_the_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no folder "me" here: "me/cache" is a Hub dataset id
    calls = []
    monkeypatch.setattr(StaleCache, "from_hub", classmethod(lambda cls, repo, **kw: calls.append(repo) or "hub"))
    assert StaleCache.load("me/cache") == "hub" and calls == ["me/cache"]
