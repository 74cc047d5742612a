"""Saved models on the Hugging Face Hub: ``ps.load("hf-hub:user/name")`` and ``push_to_hub``.

A Hub repository holds exactly what a local directory holds (``peftsmoothing.json``,
``trainable.safetensors``, the card ``README.md``). Downloading fetches only those files
(never a legacy ``trainable.pt``, never anything else the repository holds) with
``huggingface_hub`` (``pip install 'peftsmoothing[hub]'``), into its cache; the local copy then
goes through exactly the checks of a local directory (recipe allow-list, bounds, fingerprint,
safetensors header). ``HF_ENDPOINT`` chooses another endpoint (a mirror), read at each call.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Final

from .card import CARD_FILE
from .serialization import CONFIG_FILE

__all__ = ["HUB_FILES", "HUB_PREFIX", "hub_repo", "local_directory", "upload_directory"]

HUB_PREFIX: Final[str] = "hf-hub:"
"""``ps.load("hf-hub:user/name")`` or ``"hf-hub:user/name@revision"``."""

#: The files a saved model consists of on the Hub (the only ones downloaded or uploaded).
HUB_FILES: Final[tuple[str, ...]] = (CONFIG_FILE, "trainable.safetensors", CARD_FILE)

_REPO = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")
_REVISION = re.compile(r"[\w./-]{1,255}")


def hub_repo(location: str) -> tuple[str, str | None]:
    """``(repo_id, revision)`` of ``"hf-hub:user/name[@revision]"``.

    Raises:
        ValueError: For a name that is not ``user/name`` or a malformed revision.

    Examples:
        >>> hub_repo("hf-hub:me/lora-cifar10@v1")
        ('me/lora-cifar10', 'v1')
    """
    repo, _, revision = location.removeprefix(HUB_PREFIX).partition("@")
    if not _REPO.fullmatch(repo) or ".." in repo:
        raise ValueError(f"{location!r}: a Hub model is hf-hub:user/name[@revision]")
    if revision and (not _REVISION.fullmatch(revision) or ".." in revision):
        raise ValueError(f"{location!r}: invalid revision {revision!r}")
    return repo, revision or None


def _hub() -> Any:
    try:
        import huggingface_hub
    except ImportError as err:
        raise ImportError(
            "loading from or pushing to the Hugging Face Hub needs huggingface_hub: "
            "pip install 'peftsmoothing[hub]'"
        ) from err
    return huggingface_hub


def _endpoint() -> str | None:
    # read at each call (huggingface_hub reads HF_ENDPOINT once, when it is first imported)
    return os.environ.get("HF_ENDPOINT") or None


def local_directory(location: str | os.PathLike[str]) -> str | os.PathLike[str]:
    """``location`` itself, or for ``"hf-hub:user/name"`` the local copy of the repository's
    model files, as plain files in ``<Hub cache>/peftsmoothing/user--name/<revision>``
    (downloaded again only when the repository changed).

    Raises:
        ImportError: If ``huggingface_hub`` is not installed.
        ValueError: For a malformed Hub name.

    Examples:
        >>> local_directory("runs/lora")
        'runs/lora'
    """
    if not (isinstance(location, str) and location.startswith(HUB_PREFIX)):
        return location
    repo, revision = hub_repo(location)
    hub = _hub()
    # plain files in a folder of their own (the Hub cache links files to blobs elsewhere, and a
    # saved directory's files may not be links out of it)
    target = Path(hub.constants.HF_HUB_CACHE) / "peftsmoothing" / repo.replace("/", "--")
    target = target / (revision or "main").replace("/", "--")
    folder = hub.snapshot_download(repo, revision=revision, allow_patterns=list(HUB_FILES),
                                   local_dir=target, endpoint=_endpoint())  # fmt: skip
    return str(folder)


def upload_directory(
    directory: str | os.PathLike[str],
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload certified model (peftsmoothing)",
) -> str:
    """Create the Hub repository ``repo_id`` (if needed) and upload a saved model's files.

    Args:
        directory: A directory written by [`PEFTModel.save`][peftsmoothing.PEFTModel.save].
        repo_id: ``user/name``.
        private: Create the repository private.
        token: A Hub token (default: ``huggingface_hub``'s login).
        commit_message: The commit's message.

    Returns:
        The commit's URL.

    Raises:
        FileNotFoundError: If the directory holds no saved model.
        ImportError: If ``huggingface_hub`` is not installed.

    Examples:
        >>> upload_directory("no/such/dir", "me/model")
        Traceback (most recent call last):
        ...
        FileNotFoundError: no/such/dir holds no saved model (peftsmoothing.json)
    """
    folder = Path(directory)
    if not (folder / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{directory} holds no saved model ({CONFIG_FILE})")
    repo, _ = hub_repo(repo_id)
    api = _hub().HfApi(token=token, endpoint=_endpoint())
    api.create_repo(repo, private=private, exist_ok=True)
    info = api.upload_folder(repo_id=repo, folder_path=str(folder),
                             allow_patterns=list(HUB_FILES), commit_message=commit_message)
    return str(getattr(info, "commit_url", info))
