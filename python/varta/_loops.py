"""Event loops that varta.aio.watch_loop is watching.

The forensics channel lists their tasks' stacks in a capture.
"""

from __future__ import annotations

import asyncio
import weakref

WATCHED_LOOPS: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
