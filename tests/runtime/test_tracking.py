"""W&B modes and failure handling (real wandb, offline or disabled; never online in tests)."""

import logging

from conftest import compose_cfg

from thaw.runtime import tracking


def test_auto_mode_is_offline_without_credentials(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    assert tracking.resolve_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert tracking.resolve_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert tracking.resolve_mode("auto") == "disabled"
    assert tracking.resolve_mode("offline") == "offline"


def test_online_without_a_key_logs_offline_and_says_so(monkeypatch, tmp_path, caplog):
    """W&B would wait at its login prompt on a terminal: no key, no online run."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    for how in ("online", "auto"):
        monkeypatch.setenv("WANDB_MODE", "online" if how == "auto" else "")
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert tracking.resolve_mode(how) == "offline"
        assert "no API key found for api.wandb.ai" in caplog.text
    # a `wandb login` entry for the server W&B uses counts, a self-hosted one too
    (tmp_path / "netrc").write_text("machine wandb.example.org\n  login user\n  password k\n")
    assert tracking.resolve_mode("online") == "offline"
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "settings").write_text(
        "[default]\nbase_url = https://wandb.example.org\n"
    )
    assert tracking.resolve_mode("online") == "online"
    monkeypatch.setenv("WANDB_BASE_URL", "https://api.wandb.ai")
    assert tracking.resolve_mode("online") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert tracking.resolve_mode("online") == "online"


def test_offline_run_lives_in_the_run_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = compose_cfg(["experiment=tiny", "logger=wandb", "logger.mode=offline"])
    tracker = tracking.start(cfg, tmp_path)
    assert isinstance(tracker, tracking.WandbTracker)
    tracker.log_epoch({"phase": "head", "loss": 0.7, "val_accuracy": float("nan")}, step=0)
    tracker.finish({"objective": 0.5}, "FAIL")
    runs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1


def test_logger_none_tracks_nothing(tmp_path):
    tracker = tracking.start(compose_cfg(["logger=none"]), tmp_path)
    assert type(tracker) is tracking.Tracker
    assert not (tmp_path / "wandb").exists()
