from __future__ import annotations

import pytest

from tests.support import Backend, Key, make_key


@pytest.fixture(scope="session")
def colleague(backend: Backend, key: Key) -> Key:
    """Another key of `key`'s organization."""
    return make_key(backend, org=key.org_name)


@pytest.fixture(scope="session")
def stranger(backend: Backend) -> Key:
    """A key of another organization."""
    return make_key(backend)
