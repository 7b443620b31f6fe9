"""Fellowship for programs that use it: `fellowship.client` talks to a running server.

The server itself lives in the `engine` and `server` packages; this one only holds what
an application imports, and importing it alone costs nothing.
"""
