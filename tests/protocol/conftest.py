import pytest

from trivmc.protocol import LinkKey, generate_key


@pytest.fixture(scope="session")
def link_key() -> LinkKey:
    return generate_key()
