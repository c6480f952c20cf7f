"""push_to_hub with the real client against a local endpoint, and an unreachable Hub."""



from tests.helpers import script, tiny_args


def test_push_to_hub_with_the_real_client_against_a_local_endpoint(sprites_dir, tiny_unet_config, tmp_path):
    from tests.fakehub import FakeHub

    out = tmp_path / "pushed-model"
    token = "hf_local_test_token_123"
    argv = tiny_args(sprites_dir, tiny_unet_config, out, max_train_steps=2, checkpointing_steps=1,
                     push_to_hub=True, hub_token=token, hub_private_repo=True, logger="tensorboard",
                     hub_model_id="renamed-model")
    with FakeHub() as hub:
        result = script("train_unconditional.py", *argv, env={"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0"})
        assert result.returncode == 0, result.stderr[-3000:]
    assert "pushed to the Hub as test-user/renamed-model" in result.stdout  # --hub_model_id, not the folder's name
    assert hub.repos == [{"name": "renamed-model", "organization": None, "visibility": "private"}]
    writes = [r for r in hub.requests if r["method"] == "POST" and ("/api/repos/" in r["path"] or "/api/models/" in r["path"])]
    assert len(writes) >= 3  # create, preupload, commit
    assert all({k.lower(): v for k, v in r["headers"].items()}.get("authorization") == f"Bearer {token}" for r in writes)
    uploaded = set(hub.files)
    assert {"model_index.json", "unet/diffusion_pytorch_model.safetensors", "unet/config.json",
            "scheduler/scheduler_config.json", "README.md", "loss_curves.png"} <= uploaded
    assert not any(p.startswith(("checkpoint-", "logs/")) for p in uploaded)
    assert hub.files["unet/diffusion_pytorch_model.safetensors"] == (
        out / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    # The token is sent, never written: not in the run folder, the logs or the uploaded files.
    for path in out.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path
    assert not any(token.encode() in content for content in hub.files.values())
    assert b'DiffusionPipeline.from_pretrained("test-user/renamed-model")' in hub.files["README.md"]


def test_unreachable_hub_keeps_the_pipeline(sprites_dir, tiny_unet_config, tmp_path):
    out = tmp_path / "model"
    argv = tiny_args(sprites_dir, tiny_unet_config, out, max_train_steps=1, checkpointing_steps=1,
                     push_to_hub=True, hub_token="hf_x")
    result = script("train_unconditional.py", *argv, env={"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: could not push")
    assert "The trained pipeline is safe in the output folder" in result.stderr
    assert (out / "model_index.json").exists() and (out / "unet" / "diffusion_pytorch_model.safetensors").exists()
