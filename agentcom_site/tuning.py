"""The interpreter tuned for the long-lived web process (daphne).

daphne is one event loop (every socket and request) plus a few threads that talk to the
database (the report writer, the publisher, token lookups). Two CPython defaults cost the
report path most of its tail at 500 reports a second on a 2-core box:

- **Garbage collection** runs by allocation counts (700, 10, 10). A daphne holding 1,000
  sockets made a full (generation 2) collection every few seconds, each 110-275 ms, and the
  event loop stood still for all of it. Here everything alive once the app is built (Django,
  the URLconf, the API schema: ~100,000 objects) is frozen, so no collection looks at it again
  (`gc.freeze`), and the youngest generation is collected after 50,000 allocations: a report's
  short-lived objects are freed before they reach an older generation, and full collections
  come minutes apart. Cyclic garbage lives a little longer (one young generation, a few MB).
- **The GIL switch interval** (5 ms) is how long a thread back from the database may wait for
  the busy event loop to hand over the interpreter. The report writer gives it up at every SQL
  statement, so a batch of five statements could wait 25 ms; at 1 ms it waits little.

`INTERPRETER_TUNING=false` keeps CPython's defaults (`bench/ingest.py --untuned` compares).
"""

from __future__ import annotations

import gc
import sys

from django.conf import settings

GC_THRESHOLDS = (50_000, 20, 100)
SWITCH_INTERVAL_SECONDS = 0.001


def tune_web_process() -> bool:
    """Freeze what start-up built, collect garbage less often, switch threads sooner; return
    whether it did (not when INTERPRETER_TUNING is off)."""
    if not settings.INTERPRETER_TUNING:
        return False
    from django.urls import get_resolver

    get_resolver().url_patterns  # noqa: B018 - import the URLconf (views, API) before freezing
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    return True
