"""Fellowship's transports: the Quart app (HTTP, WebSocket, SSE) and the command line."""
