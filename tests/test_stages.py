"""The four stages: they train, chain, resume, run under DDP, and every YAML parses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from pixelkit.data.datamodule import PixelDataModule, shapes_sources
from pixelkit.data.synth import synthesize
from pixelkit.stages import (
    STAGES,
    CaptionPretraining,
    DenseCaptioning,
    ReferringTraining,
    TraceTraining,
)
from pixelkit.training import packaged_configs, resolve_config

STAGE_TASKS = {"caption": ["caption", "loca_caption"], "trace": ["trace", "caption"],
               "refer": ["refer", "trace"], "densecap": ["densecap", "refer"]}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    synthesize(root, num_images=24, image_size=64, seed=3, val_fraction=0.25, progress=False)
    return root


def datamodule(world: Path, tasks: list[str], **kw) -> PixelDataModule:
    return PixelDataModule(train=shapes_sources(str(world), "train", tasks),
                           val=shapes_sources(str(world), "val", tasks[:1]),
                           batch_size=4, samples_per_epoch=16, hflip_prob=0.5, **kw)


def trainer(tmp_path: Path, **kw) -> L.Trainer:
    defaults = dict(accelerator="cpu", logger=False, enable_progress_bar=False,
                    enable_model_summary=False, default_root_dir=tmp_path)
    return L.Trainer(**{**defaults, **kw})


@pytest.mark.parametrize("name", list(STAGES))
def test_stage_fast_dev_run_and_learns_one_batch(world, tmp_path, name) -> None:
    L.seed_everything(0)
    stage = STAGES[name](lr=3e-3, warmup_steps=1)
    dm = datamodule(world, STAGE_TASKS[name])
    trainer(tmp_path, fast_dev_run=2, enable_checkpointing=False).fit(stage, dm)
    # trainable / frozen as the stage says
    trains = {n.split(".")[0] for n, p in stage.model.named_parameters() if p.requires_grad}
    frozen_heads = {"caption": {"point_head", "proposal_head"}, "trace": {"proposal_head"},
                    "refer": {"proposal_head"}, "densecap": set()}[name]
    assert not trains & frozen_heads
    assert {"extractor", "language_model"} <= trains
    # the loss falls on one repeated batch
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    opt = torch.optim.AdamW([p for p in stage.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = stage._forward(batch, train=True).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0] * 0.8, losses


def test_stage_chaining_copies_every_shared_weight(world, tmp_path) -> None:
    L.seed_everything(0)
    first = TraceTraining(lr=1e-3)
    tr = trainer(tmp_path, max_steps=2, limit_val_batches=1,
                 callbacks=[L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True)])
    tr.fit(first, datamodule(world, ["trace"]))
    ckpt = tmp_path / "last.ckpt"
    nxt = ReferringTraining(init_from=str(ckpt))
    ref = first.model.state_dict()
    for n, v in nxt.model.state_dict().items():
        assert torch.equal(v, ref[n]), n
    dense = DenseCaptioning(init_from=str(ckpt))  # the same architecture through the chain
    assert torch.equal(dense.model.point_head.mlp[0].weight, first.model.point_head.mlp[0].weight)
    with pytest.raises(ValueError, match="architecture differs"):
        TraceTraining(model={"extractor": {"depth": 1}}, init_from=str(ckpt))


def test_resume_continues_step_and_optimizer(world, tmp_path) -> None:
    L.seed_everything(0)
    ck = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True,
                                             every_n_train_steps=3)
    tr = trainer(tmp_path, max_steps=3, limit_val_batches=0, callbacks=[ck])
    tr.fit(CaptionPretraining(), datamodule(world, ["caption"]))
    saved = torch.load(tmp_path / "ck" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 3
    state_before = saved["optimizer_states"][0]["state"]
    resumed = CaptionPretraining()
    tr2 = trainer(tmp_path, max_steps=5, limit_val_batches=0,
                  callbacks=[L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck",
                                                                 save_last=True)])
    seen = {}

    class Spy(L.Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            seen["step"] = trainer.global_step
            opt_state = trainer.optimizers[0].state_dict()["state"]
            seen["adam_step"] = float(next(iter(opt_state.values()))["step"])

    tr2.callbacks.append(Spy())
    tr2.fit(resumed, datamodule(world, ["caption"]), ckpt_path=str(tmp_path / "ck" / "last.ckpt"))
    assert seen["step"] == 3  # continues, not restarted
    assert seen["adam_step"] == float(next(iter(state_before.values()))["step"]) == 3.0
    assert tr2.global_step == 5


DDP_SCRIPT = r"""
import sys, torch, lightning as L
from pixelkit.data.datamodule import PixelDataModule, shapes_sources
from pixelkit.stages import TraceTraining
world, out = sys.argv[1], sys.argv[2]
L.seed_everything(0)
dm = PixelDataModule(train=shapes_sources(world, "train", ["trace", "refer"]), batch_size=2,
                     samples_per_epoch=16)
stage = TraceTraining(lr=1e-3)
init = {k: v.detach().clone() for k, v in stage.model.named_parameters()}
tr = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=3, logger=False,
               enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0,
               enable_model_summary=False)
tr.fit(stage, dm)
# parameters (BatchNorm running statistics are per-process buffers under plain DDP)
torch.save({"init": init, "final": {k: v.detach().clone() for k, v in stage.model.named_parameters()}},
           f"{out}/rank{tr.global_rank}.pt")
"""


def test_two_process_ddp_ends_with_identical_weights(world, tmp_path) -> None:
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PL_DISABLE_FORK": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), str(world), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    changed = 0
    for k, v in r0["final"].items():
        assert torch.equal(v, r1["final"][k]), k
        changed += not torch.equal(v, r0["init"][k])
    assert changed > 10  # they trained (different data per rank), and stayed in sync


def test_config_names_resolve_to_the_packaged_files(tmp_path) -> None:
    names = packaged_configs()
    assert {"caption", "trace", "refer", "densecap", "real/trace"} <= set(names)
    trace = resolve_config("trace")
    assert trace.is_file() and trace.parent.name == "configs"
    # the repository path of earlier versions and the file name name the same config
    assert resolve_config("configs/trace.yaml") == resolve_config("trace.yaml") == trace
    assert resolve_config("real/trace") == trace.parent / "real" / "trace.yaml"
    own = tmp_path / "trace.yaml"  # a file wins over a packaged name
    own.write_text(trace.read_text())
    assert resolve_config(own) == own
    with pytest.raises(FileNotFoundError, match="packaged: .*real/refer"):
        resolve_config("traec")
