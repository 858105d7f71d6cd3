"""Trials of an in-process sweep reuse this process's backbone (initial weights restored in memory):
the second trial of a process computes exactly what it computes in a fresh process."""

import json

from conftest import thaw_train

RUN = ["experiment=tiny", "backbone.image_size=32", "data.num_train=64", "data.num_val=32", "data.batch_size=16",
       "trainer.deterministic=true", "trainer.save_model=false", "logger=none", "head=mlp", "unfreeze.depth=3"]


def test_a_trial_second_in_its_process_equals_it_in_a_fresh_process(tmp_path):
    sw = tmp_path / "sw"
    res = thaw_train(["--multirun", *RUN, "sweep=depth_lr", "hydra/sweeper/sampler=grid", "lr.base=choice(0.001,0.003)",
                      "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={sw}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    second = next(d for d in (sw / "trial_0", sw / "trial_1") if "reusing this process's" in (d / "train.log").read_text())
    lr = next(line.split("=")[1] for line in (second / ".hydra" / "overrides.yaml").read_text().split()
              if line.startswith("lr.base="))
    res = thaw_train([*RUN, f"lr.base={lr}", f"hydra.run.dir={tmp_path / 'fresh'}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (second, tmp_path / "fresh"))
    assert len(a["history"]) == len(b["history"]) == 2
    for ra, rb in zip(a["history"], b["history"]):  # head (dropout, hidden layer) and fine-tuning alike
        for k in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert abs(ra[k] - rb[k]) <= 1e-6, (ra["epoch"], k, ra[k], rb[k])
    assert "reusing" not in (tmp_path / "fresh" / "train.log").read_text()
