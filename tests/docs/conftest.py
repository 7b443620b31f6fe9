"""The real server and the mock backend, shared with the integration tests."""

from tests.integration.conftest import mock, server, server_factory

__all__ = ["mock", "server", "server_factory"]
