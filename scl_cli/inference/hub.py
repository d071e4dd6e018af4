"""The Hugging Face Hub, through `huggingface_hub` (its cache, offline mode and tokens): which local
folder a `scl.load` name means, and uploading a saved model folder.

A name is a local path when it exists (a run, checkpoint folder, `save_pretrained` folder or
published `.ckpt`), a Hub model id (`user/repo`, or `hf-hub:user/repo` to insist) otherwise. A Hub id
is fetched with `snapshot_download` into the Hub cache (`HF_HUB_CACHE`); with `HF_HUB_OFFLINE=1`
(or `local_files_only=True`) only the cache is read, and an id that is not there is one line.
"""

from __future__ import annotations

import re
from pathlib import Path

from scl_cli import __version__
from scl_cli.errors import CheckpointError, SclError

HUB_PREFIX = "hf-hub:"
# What a model repo must hold for `scl.load`; anything else in the repo (images, logs) is not fetched.
SNAPSHOT_FILES = ["config.json", "model.safetensors", "tokenizer.json", "answers.json", "README.md"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class HubError(SclError):
    """The Hub could not be reached or refused a request (exit code 1)."""


def is_repo_id(name: str) -> bool:
    """`user/repo` (no leading `/`, `.` or `~`, exactly one slash)."""
    return bool(_REPO_ID.match(name)) and not name.startswith((".", "~"))


def resolve_source(
    name: str | Path,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
) -> Path:
    """The local path a `scl.load` name means: the path itself when it exists, else the Hub
    snapshot of model id `name` (downloaded, or from the cache). `CheckpointError` in one line when
    it is neither."""
    text = str(name)
    forced = text.startswith(HUB_PREFIX)
    repo_id = text[len(HUB_PREFIX) :] if forced else text
    if not forced:
        path = Path(text).expanduser()
        if path.exists():
            return path
        if not is_repo_id(text):
            raise CheckpointError(f"checkpoint {text} does not exist")
    if not is_repo_id(repo_id):
        raise CheckpointError(f"{text}: not a Hugging Face model id (expected user/repo)")
    return Path(download(repo_id, revision, cache_dir, token, local_files_only))


def download(
    repo_id: str,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
) -> str:
    """`snapshot_download` of the files `scl.load` needs; Hub failures become one-line errors."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo_id}" + (f"@{revision}" if revision else "")
    offline = local_files_only or constants.HF_HUB_OFFLINE
    try:
        return snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            local_files_only=local_files_only,
            allow_patterns=SNAPSHOT_FILES,
            library_name="scl-cli",
            library_version=__version__,
        )
    except (LocalEntryNotFoundError, FileNotFoundError) as err:
        cache = cache_dir or constants.HF_HUB_CACHE
        if offline:
            raise CheckpointError(
                f"{where}: not a local path, and not in the Hugging Face cache {cache} (offline: HF_HUB_OFFLINE=1) — "
                "download it once while online, or pass a local folder"
            ) from None
        raise CheckpointError(
            f"{where}: not a local path, and the Hub cannot be reached ({_first_line(err)})"
        ) from None
    except GatedRepoError:
        raise CheckpointError(
            f"{where}: a gated model — accept its terms on the Hub and log in (hf auth login)"
        ) from None
    except RepositoryNotFoundError:
        raise CheckpointError(
            f"{where}: no such model on the Hugging Face Hub (or it is private: log in with `hf auth login` or set HF_TOKEN)"
        ) from None
    except RevisionNotFoundError:
        raise CheckpointError(f"{where}: no such revision") from None
    except HfHubHTTPError as err:
        raise HubError(f"{where}: the Hub refused the download ({_first_line(err)})") from None


def upload_folder(
    folder: Path,
    repo_id: str,
    private: bool | None = None,
    token: str | bool | None = None,
    commit_message: str = "Upload SCL model",
    revision: str | None = None,
    create_pr: bool = False,
) -> str:
    """Create `repo_id` if needed and upload every file of `folder` as one commit; returns the
    commit URL. `HubError` in one line when the Hub refuses (offline, no token, no rights)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if not is_repo_id(repo_id):
        raise CheckpointError(f"{repo_id}: not a Hugging Face model id (expected user/repo)")
    api = HfApi(library_name="scl-cli", library_version=__version__)
    try:
        url = api.create_repo(repo_id, token=token, private=private, exist_ok=True)
        repo = url.repo_id if hasattr(url, "repo_id") else repo_id
        if revision:
            api.create_branch(repo, branch=revision, token=token, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo,
            folder_path=folder,
            commit_message=commit_message,
            token=token,
            revision=revision,
            create_pr=create_pr,
        )
    except OfflineModeIsEnabled:
        raise HubError(f"{repo_id}: cannot push while offline (HF_HUB_OFFLINE=1 is set)") from None
    except HfHubHTTPError as err:
        raise HubError(
            f"{repo_id}: the Hub refused the upload ({_first_line(err)}) — logged in? (hf auth login, HF_TOKEN)"
        ) from None
    except OSError as err:  # no network, DNS, TLS
        raise HubError(f"{repo_id}: cannot reach the Hub ({_first_line(err)})") from None
    return str(getattr(info, "commit_url", None) or getattr(info, "pr_url", None) or info)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__
