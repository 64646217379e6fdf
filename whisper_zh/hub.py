"""A model or dataset argument: a local path, or a Hugging Face Hub id. Decided here only."""

from __future__ import annotations

import os


def looks_local(name: str) -> bool:
    """A path rather than a Hub id ("name" or "org/name"), judged by its spelling alone:
    absolute, starting with ``.`` or ``~``, or with more than one ``/``. Lets a missing
    folder fail at once instead of asking the Hub (which, offline, retries before it fails)."""
    return (os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1
            or (os.sep != "/" and os.sep in name))


def is_hub_id(name: str) -> bool:
    """True for a Hub repo id ("org/name" or "name") that is not an existing local path."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not name or looks_local(name) or os.path.exists(os.path.expanduser(name)):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True

# What the app serves and the pipeline fine-tunes when no model is named.
DEFAULT_MODEL = "openai/whisper-small"
