"""Pushing a stage's output folder to the Hugging Face Hub."""

from __future__ import annotations

from pathlib import Path


def push_folder(folder: str | Path, repo_id: str, private: bool | None = None) -> str:
    """Upload a saved stage folder, without its checkpoints, to `repo_id`; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    # A bare name is created under the token's user: upload to the id the Hub answered, not to the bare name
    # (which would name a legacy repo without namespace and fail with "repository not found").
    repo_id = api.create_repo(repo_id, exist_ok=True, private=private).repo_id
    info = api.upload_folder(
        folder_path=str(folder), repo_id=repo_id, ignore_patterns=["checkpoint-*", "checkpoint-*/**", "*.pt"]
    )
    return str(getattr(info, "commit_url", info))


def push_stage_output(args) -> str | None:
    """Push a stage's `output_dir` when its `TrainingArguments` ask for it (main process only)."""
    if not args.push_to_hub or args.process_index != 0:
        return None
    return push_folder(args.output_dir, args.hub_model_id or Path(args.output_dir).name, private=args.hub_private_repo)
