import pytest


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server (SQLite under PREFECT_HOME) for every real flow run in the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
