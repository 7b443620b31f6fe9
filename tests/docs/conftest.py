"""The real server and the mock backend, as the other suites start them."""

from tests.support.server import mock, server, server_factory

__all__ = ["mock", "server", "server_factory"]
