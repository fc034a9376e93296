"""A real MCP server (streamable HTTP) with a calendar tool, for tests and by hand.

    python -m tests.servers.mcp_server --port 9100    # serves http://127.0.0.1:9100/mcp
"""

from __future__ import annotations

import argparse

from mcp.server.fastmcp import FastMCP


def build(port: int) -> FastMCP:
    server = FastMCP("calendar", host="127.0.0.1", port=port, stateless_http=True,
                     log_level="WARNING")

    @server.tool()
    def next_free_slot(day: str) -> str:
        """The next free appointment slot on the given day."""
        return f"{day} 15:30 with Dr. Lee"

    @server.tool()
    def cancel_slot(slot: str) -> str:
        """Cancel a booked slot."""
        return f"cancelled {slot}"

    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=9100)
    args = parser.parse_args()
    build(args.port).run(transport="streamable-http")


if __name__ == "__main__":
    main()
