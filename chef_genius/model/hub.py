"""Whether a model name can be loaded at all, decided in seconds and before anything heavy is imported:
a hub name that is neither a local folder nor in the download cache, on a machine that cannot reach the
hub, fails with one sentence instead of transformers' minute of retries."""

from __future__ import annotations

from pathlib import Path

from chef_genius.errors import UserError

HUB_PROBE_SECONDS = 3.0


def check_hub_reachable(name_or_path: str | Path) -> None:
    """Fail at once, with one sentence, for a hub name that is neither a local folder nor cached while the
    hub cannot be reached (offline): transformers would retry for about a minute before saying so."""
    import os

    if Path(name_or_path).exists() or _cached(str(name_or_path)):
        return
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if offline or not _hub_answers(os.environ.get("HF_ENDPOINT", "https://huggingface.co")):
        why = "HF_HUB_OFFLINE is set" if offline else "the Hugging Face hub cannot be reached (offline?)"
        raise UserError(
            f"{name_or_path!r} is not a local folder and not in the download cache, and {why}: "
            "download it once on a connected machine, or give a local model folder"
        )


def _cached(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # a name the hub would refuse: let transformers say why
        return True


def _hub_answers(endpoint: str) -> bool:
    """Whether a TCP connection to the hub opens within ``HUB_PROBE_SECONDS`` (name lookup included)."""
    import socket
    import threading
    from urllib.parse import urlparse

    url = urlparse(endpoint)
    result = []

    def probe():
        try:
            socket.create_connection((url.hostname, url.port or 443), timeout=HUB_PROBE_SECONDS).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(HUB_PROBE_SECONDS + 0.5)
    return bool(result and result[0])
