"""``python3 -m app.healthcheck``: exit 0 when this host's service answers ``GET /health``.

The container's HEALTHCHECK (Dockerfile, compose.yaml): the slim image has no curl, and
this imports nothing of the service, so a check costs ~30 ms of one short process.
"""

from __future__ import annotations

import os
import sys
import urllib.request


def main() -> int:
    port = os.environ.get("AGENTHOST_PORT", "8000")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
            return 0 if response.status == 200 else 1
    except OSError as exc:
        print(f"GET /health on port {port} failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
