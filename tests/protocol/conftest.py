import pytest

from trivmc.protocol import KeyPool, LinkKey


@pytest.fixture(scope="session")
def link_key() -> LinkKey:
    return KeyPool(1).take()
