"""Pushing a stage's output folder to the Hugging Face Hub."""

from __future__ import annotations

from pathlib import Path


def push_folder(folder: str | Path, repo_id: str, private: bool | None = None) -> str:
    """Upload a saved stage folder, without its checkpoints, to `repo_id`; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, exist_ok=True, private=private)
    info = api.upload_folder(
        folder_path=str(folder), repo_id=repo_id, ignore_patterns=["checkpoint-*", "checkpoint-*/**", "*.pt"]
    )
    return str(getattr(info, "commit_url", info))
