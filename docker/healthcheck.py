"""Docker HEALTHCHECK: exit 0 when the server's /health answers 200 on $PORT, else 1.

Python rather than curl, because both base images have python3 and neither promises curl.
"""

import os
import sys
import urllib.request

url = f"http://127.0.0.1:{os.environ.get('PORT', '8000')}/health"
try:
    with urllib.request.urlopen(url, timeout=float(os.environ.get("HEALTH_TIMEOUT", "5"))) as response:
        sys.exit(0 if response.status == 200 else 1)
except OSError as err:  # refused, timed out, or an HTTP error status
    print(f"unhealthy: {url}: {err}", file=sys.stderr)
    sys.exit(1)
