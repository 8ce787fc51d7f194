"""The function HTTP server, one stage per process on aiohttp; the entry point is pipeline.serve."""

from pipeline.server.app import FunctionServer, ServerSettings
from pipeline.server.responses import ErrorKind, error_reply

__all__ = ["ErrorKind", "FunctionServer", "ServerSettings", "error_reply"]
