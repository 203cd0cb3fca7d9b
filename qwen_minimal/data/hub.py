"""Whether the Hugging Face hub can be reached, and what to tell the user when it
cannot."""

from __future__ import annotations

import functools
import os
import socket
import threading
import urllib.parse
import urllib.request

SET_DATA_HINT = (
    "set $QWEN_MINIMAL_DATA (or pass a path) to a folder with "
    "wiki.train.tokens/wiki.valid.tokens, "
    "train.txt/valid.txt, valid.txt/test.txt or plain .txt files"
)
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


@functools.lru_cache(maxsize=None)
def _can_connect(host: str, port: int, timeout: float) -> bool:
    # In a thread, because a DNS lookup ignores the socket timeout and can stall for
    # much longer.
    ok = []

    def connect():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(ok)


def hub_reachable(timeout: float = 1.5) -> bool:
    """True when the Hugging Face hub answers within `timeout` seconds. HF_HUB_OFFLINE=1
    (or HF_DATASETS_OFFLINE / TRANSFORMERS_OFFLINE) means no without trying. The answer
    of a connection attempt is remembered for the rest of the process."""
    for var in OFFLINE_VARIABLES:
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return False
    # Behind a proxy only the proxy can be reached directly, so that is what we try.
    url = (
        urllib.request.getproxies().get("https")
        or os.environ.get("HF_ENDPOINT")
        or "https://huggingface.co"
    )
    url = urllib.parse.urlparse(url)
    return _can_connect(url.hostname, url.port or 443, timeout)


def offline_help(what: str) -> str:
    """`what` is needed from the hub, which is out of reach: say so, and how to use
    local files instead."""
    return (
        f"{what}, but the Hugging Face hub is unreachable (or HF_HUB_OFFLINE=1). "
        f"Run online once, or use local files: {SET_DATA_HINT}, and "
        "$QWEN_MINIMAL_TOKENIZER (or pass a "
        f"path) to a tokenizer folder (e.g. one with GPT-2's vocab.json and merges.txt)"
    )
