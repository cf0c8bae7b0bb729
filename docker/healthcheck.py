#!/usr/bin/env python3
"""The image's HEALTHCHECK: exit 0 when ``/v2/health/ready`` answers 200 on this container's
HTTP port (``TORCHFERRY_HTTP_PORT``), else 1 with one line saying why.

Standard library only, and no torchferry import: it runs every few seconds, and should cost
a Python start-up and one request, not the serving stack's imports."""

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    port = os.environ.get("TORCHFERRY_HTTP_PORT", "8080")
    url = f"http://127.0.0.1:{port}/v2/health/ready"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError as exc:  # refused, timed out
        print(f"{url}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"{url}: HTTP {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
