"""``python -m app``: serve with uvicorn on the configured host and port."""

from __future__ import annotations

import gc
import sys

import uvicorn
from pydantic import ValidationError

from app.connections import connection_cap, guarded_protocol, raise_open_file_limit
from app.main import create_app
from app.observability.logging import configure_logging
from app.worker import graceful_shutdown_s
from config.settings import Settings


def main() -> int:
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"agenthost: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    open_files = raise_open_file_limit()
    app = create_app(settings)
    # The imported libraries are ~100 MB of long-lived objects; moving them out of the
    # collector's generations keeps each collection short under load.
    gc.collect()
    gc.freeze()
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        # Requests in flight (JSON turns, streams) get the grace to finish; a little more
        # here, so streams still running then get their final event before uvicorn
        # closes their connections. Turns whose client left get the grace again in the
        # lifespan's shutdown.
        timeout_graceful_shutdown=graceful_shutdown_s(settings),
        http=guarded_protocol(settings.header_read_timeout_s,
                              connection_cap(settings.max_connections, open_files)),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
