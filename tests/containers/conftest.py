"""``make container-test``: podman installed and set up, and the images built, once."""

from __future__ import annotations

import pytest

from tests.containers.podman import CannotRun, ensure_images, ensure_podman


@pytest.fixture(scope="session")
def images() -> dict[str, float]:
    try:
        ensure_podman()
    except CannotRun as exc:
        pytest.skip(f"podman cannot run on this machine: {exc}")
    took = ensure_images()
    print("image builds (s):", {step: round(s) for step, s in took.items()})
    return took
