"""`chatforge.hub.push_folder` against a local fake Hub: what arrives on the server, byte for byte."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hub_server import FakeHub
from huggingface_hub import constants
from huggingface_hub.utils import is_package_available

from chatforge.hub import push_folder
from chatforge.model_card import write_model_card

REPO_ID = "alice/tiny-base"


@pytest.fixture(params=["xet-disabled", "xet-installed"])
def fake_hub(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """A running fake Hub that huggingface_hub talks to for this test.

    Two client paths: with Xet disabled `upload_folder` goes through `create_commit` (which also validates the
    model card's YAML); with `hf_xet` installed, as in a default install, it goes through the pipelined uploader.
    The fake Hub offers only regular uploads, so neither path needs Xet or LFS storage.
    """
    xet_disabled = request.param == "xet-disabled"
    if not xet_disabled and not is_package_available("hf_xet"):
        pytest.skip("hf_xet is not installed: upload_folder has only the create_commit path")
    with FakeHub() as hub:
        for name, value in hub.env().items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
        if not xet_disabled:
            monkeypatch.delenv("HF_HUB_DISABLE_XET")
        # huggingface_hub reads these once, at import: the environment alone does not reach this process.
        monkeypatch.setattr(constants, "ENDPOINT", hub.url)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", xet_disabled)
        yield hub
        assert hub.unhandled == [], f"requests the fake Hub does not know: {hub.unhandled}"


def make_stage_folder(folder: Path, eval_loss: float = 1.5) -> Path:
    """A stage-like output: a tiny saved model, its model card, a checkpoint and an optimizer state."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(
        "qwen3",
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=64,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    write_card(folder, eval_loss)
    (folder / "checkpoint-5").mkdir()
    (folder / "checkpoint-5" / "trainer_state.json").write_text(json.dumps({"global_step": 5}))
    (folder / "optimizer.pt").write_bytes(b"\x80\x02not really a pickle")
    return folder


def write_card(folder: Path, eval_loss: float) -> None:
    write_model_card(
        folder,
        stage="pretraining",
        base_model=None,
        datasets=["data/world/corpus"],
        metrics={"eval_loss": eval_loss},
        details={"architecture": "qwen3"},
    )


def local_files(folder: Path) -> dict[str, bytes]:
    """The files push_folder should upload: everything but `checkpoint-*` folders and `*.pt` files."""
    files = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.is_file() and not relative.parts[0].startswith("checkpoint-") and path.suffix != ".pt":
            files[relative.as_posix()] = path.read_bytes()
    return files


def test_push_folder_uploads_the_stage_folder(fake_hub: FakeHub, tmp_path: Path) -> None:
    folder = make_stage_folder(tmp_path / "tiny-base")
    expected = local_files(folder)
    assert {"README.md", "config.json", "model.safetensors"} <= set(expected)

    url = push_folder(folder, REPO_ID)

    repo = fake_hub.repo(REPO_ID)
    assert not repo.private
    assert len(repo.commits) == 1
    assert url == f"{fake_hub.url}/{REPO_ID}/commit/{repo.sha}"
    assert sorted(repo.files) == sorted(expected)
    for name, content in expected.items():
        assert repo.files[name] == content, f"{name} arrived changed"
    assert len(repo.files["model.safetensors"]) > 10_000
    # Ignored files were not even announced to the server.
    announced = {item["path"] for item in fake_hub.preuploaded}
    assert announced == set(expected)

    card = repo.files["README.md"].decode()
    assert card.startswith("---\n")
    front_matter = card.split("---\n")[1]
    assert "library_name: transformers" in front_matter
    assert "pipeline_tag: text-generation" in front_matter
    assert "| eval_loss | 1.5 |" in card and "A base model pretrained from scratch, made with chatforge" in card
    # upload_folder has the server check the card's metadata before uploading (create_commit checks it again).
    assert fake_hub.validated_yaml and set(fake_hub.validated_yaml) == {card}


def test_push_twice_replaces_changed_files_only(fake_hub: FakeHub, tmp_path: Path) -> None:
    folder = make_stage_folder(tmp_path / "tiny-base")
    push_folder(folder, REPO_ID)
    first = fake_hub.repo(REPO_ID)
    weights = first.files["model.safetensors"]

    write_card(folder, eval_loss=0.75)
    (folder / "eval_results.json").write_text(json.dumps({"eval_loss": 0.75}))
    url = push_folder(folder, REPO_ID)  # the repo exists: create_repo gets a 409 and goes on

    repo = fake_hub.repo(REPO_ID)
    assert repo is first and len(fake_hub.repos) == 1
    assert len(repo.commits) == 2
    assert url == f"{fake_hub.url}/{REPO_ID}/commit/{repo.sha}"
    # The client skips the files whose git oid the server already holds.
    assert sorted(repo.commits[1].added) == ["README.md", "eval_results.json"]
    assert repo.files == local_files(folder)
    assert repo.files["model.safetensors"] == weights
    card = repo.files["README.md"].decode()
    assert "| eval_loss | 0.75 |" in card and "| eval_loss | 1.5 |" not in card

    # Nothing changed: no empty commit, and the URL names the current head.
    assert push_folder(folder, REPO_ID) == url
    assert len(repo.commits) == 2


def test_push_private_repo(fake_hub: FakeHub, tmp_path: Path) -> None:
    folder = tmp_path / "card-only"
    folder.mkdir()
    write_card(folder, eval_loss=2.0)
    push_folder(folder, "alice/private-card", private=True)
    repo = fake_hub.repo("alice/private-card")
    assert repo.private
    assert repo.files == {"README.md": (folder / "README.md").read_bytes()}


def test_push_to_a_bare_name_lands_in_the_users_namespace(fake_hub: FakeHub, tmp_path: Path) -> None:
    # The pretraining stage pushes to the output folder's name when the recipe sets no hub_model_id.
    folder = tmp_path / "tiny-base"
    folder.mkdir()
    write_card(folder, eval_loss=2.0)
    url = push_folder(folder, "tiny-base")
    repo = fake_hub.repo(f"{fake_hub.user}/tiny-base")
    assert url == f"{fake_hub.url}/{fake_hub.user}/tiny-base/commit/{repo.sha}"
    assert repo.files == {"README.md": (folder / "README.md").read_bytes()}
    # Again, once the repo exists: the Hub's 409 names the repo, and the upload still goes there.
    write_card(folder, eval_loss=1.0)
    push_folder(folder, "tiny-base")
    assert list(fake_hub.repos) == [("model", f"{fake_hub.user}/tiny-base")]
    assert repo.files == {"README.md": (folder / "README.md").read_bytes()} and len(repo.commits) == 2
