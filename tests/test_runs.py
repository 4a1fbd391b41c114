"""pixelkit.runs (one way to run a stage, a chain and a study), the composed stage configs,
typed model overrides and the data catalog."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from pixelkit import PixelLLMConfig, runs
from pixelkit.cli import main
from pixelkit.data import catalog
from pixelkit.data.synth import synthesize
from pixelkit.optional import available
from pixelkit.training import cli_main, config_files, packaged_configs


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs") / "shapes"
    synthesize(root, num_images=24, image_size=64, seed=0, val_fraction=0.25, progress=False)
    return root


SMALL = {"batch_size": 2, "val_limit": 4, "accelerator": "cpu"}


# --------------------------------------------------------------------------- resolving


def test_resolve_run_applies_each_setting_once(tmp_path: Path, world: Path) -> None:
    run = runs.resolve_run("trace", out=tmp_path, name="r", data_root=world, steps=7,
                           val_every=3, snapshot_every=2, wandb=False,
                           prediction_images=False, model={"loss": {"point_weight": 3.0}},
                           overrides={"model.lr": 0.5, "model.init_from": None}, **SMALL)
    cfg = yaml.safe_load(run.path.read_text())
    assert run.path == tmp_path.resolve() / "configs" / "r.yaml" and cfg == run.config
    init = cfg["model"]["init_args"]
    # base.yaml's model settings stay; the setting changes the one field it names
    assert init["model"] == {"loss": {"point_weight": 3.0, "point_reduction": "row"}}
    assert init["lr"] == 0.5 and init["init_from"] is None and init["preset"] == "tiny"
    assert cfg["data"]["root"] == str(world) and cfg["data"]["batch_size"] == 2
    t = cfg["trainer"]
    assert t["max_steps"] == 7 and t["val_check_interval"] == 3 and t["accelerator"] == "cpu"
    folder = str(tmp_path.resolve() / "runs" / "r")
    assert t["default_root_dir"] == folder == str(run.dir)
    assert [lg["class_path"].rsplit(".", 1)[1] for lg in t["logger"]] == ["CSVLogger"]
    assert t["logger"][0]["init_args"]["save_dir"] == folder
    names = [cb["class_path"].rsplit(".", 1)[1] for cb in t["callbacks"]]
    assert "PredictionImages" not in names and names.count("ModelCheckpoint") == 3  # best, last, snapshots
    assert all(cb["init_args"]["dirpath"].startswith(folder) for cb in t["callbacks"]
               if cb.get("init_args", {}).get("dirpath"))
    # the default: the config's W&B logger, named after the run, in the study's group
    with_wandb = runs.resolve_run("trace", out=tmp_path, data_root=world, wandb_group="g")
    if available("wandb"):  # (the core-only job has no W&B logger to keep)
        (wb,) = [lg for lg in with_wandb.config["trainer"]["logger"]
                 if "Wandb" in lg["class_path"]]
        assert wb["init_args"]["group"] == "g" and wb["init_args"]["name"] == "trace"
    # init_from: previous -> the caption stage's last checkpoint under <out>/runs
    assert with_wandb.config["model"]["init_args"]["init_from"] == str(
        tmp_path.resolve() / "runs" / "caption" / "checkpoints" / "last.ckpt")


def test_a_list_of_sub_configs_takes_their_dict_form(tmp_path: Path, world: Path) -> None:
    """A backbone as BackboneConfig.to_dict() gives it, unset (None) fields included."""
    backbone = PixelLLMConfig.from_name("tiny").to_dict()["image_encoder"]["backbones"][0]
    assert backbone["image_size"] is None and backbone["weights"] is None
    run = runs.resolve_run("trace", out=tmp_path, data_root=world, wandb=False,
                           model={"image_encoder": {"backbones": [{**backbone, "frozen": True}]}},
                           **SMALL)
    (got,) = run.config["model"]["init_args"]["model"]["image_encoder"]["backbones"]
    assert got["frozen"] is True and got["image_size"] is None and got["name"] == backbone["name"]


def test_a_value_set_twice_or_unknown_is_an_error(tmp_path: Path, world: Path) -> None:
    with pytest.raises(ValueError, match="trainer.max_steps is set twice: by steps"):
        runs.run_keys({"steps": 3}, {"trainer.max_steps": 5})
    with pytest.raises(ValueError, match="model.init_args.model.loss.point_weight is set twice"):
        runs.run_keys({}, {"model.loss.point_weight": 1}, {"loss": {"point_weight": 2}})
    with pytest.raises(ValueError, match="unknown run setting 'step'"):
        runs.run_keys({"step": 3})
    # an unknown model field is named, with the closest one
    with pytest.raises(ValueError, match=r"model.init_args.model.loss.pointweight: no such "
                                         r"setting; did you mean .*loss.point_weight\?"):
        runs.resolve_run("caption", out=tmp_path, data_root=world,
                         overrides={"model.loss.pointweight": 1.0})


def test_stage_configs_are_base_plus_deltas() -> None:
    base = Path(config_files("trace")[0])
    assert [p.name for p in config_files("trace")] == ["base.yaml", "trace.yaml"]
    assert [p.parent.name + "/" + p.name for p in config_files("real/refer")] == [
        "real/base.yaml", "real/refer.yaml"]
    shared = ("trainer:", "logger:", "callbacks:", "ModelCheckpoint", "default_root_dir",
              "save_dir", "dirpath", "ann:", "preset:")
    for name in packaged_configs():
        if name.endswith("base"):
            continue
        text = "\n".join(ln for ln in config_files(name)[-1].read_text().splitlines()
                         if not ln.lstrip().startswith("#"))
        # a stage file holds its deltas: no loggers, callbacks, paths or run names
        assert not any(k in text for k in shared[1:]), (name, text)
        assert len(text.splitlines()) <= 20, name
    assert "logger:" in base.read_text()


def _placeholder_root(tmp_path: Path, config: str) -> Path:
    """Empty files where the config's catalog splits expect them (parse and build only)."""
    root = tmp_path / "data"
    for files in config_files(config):
        for split in ("train", "val"):
            for src in (yaml.safe_load(files.read_text()).get("data") or {}).get(split) or []:
                spec = catalog.get(src["split"])
                spec.annotation(src["task"], root).parent.mkdir(parents=True, exist_ok=True)
                spec.annotation(src["task"], root).touch()
                spec.image_dir(root).mkdir(parents=True, exist_ok=True)
    return root


@pytest.mark.parametrize("name", [n for n in packaged_configs() if not n.endswith("base")])
def test_every_config_composes_and_builds_on_the_tiny_preset(name: str, tmp_path: Path) -> None:
    root = _placeholder_root(tmp_path, name)
    cli = cli_main(["--config", name, "--data.root", str(root), "--model.init_args.preset", "tiny",
                    "--model.init_args.init_from", "null", "--trainer.accelerator", "cpu",
                    "--trainer.precision", "32", "--runs", str(tmp_path / "runs"),
                    "--trainer.logger", "false"], run=False)
    assert type(cli.model).stage_name == name.split("/")[-1]
    assert cli.model.config.name == "tiny" and cli.datamodule.train_sources
    assert all(Path(s.ann).is_relative_to(root) for s in cli.datamodule.train_sources)


# --------------------------------------------------------------------------- training


def test_run_stage_and_chain(tmp_path: Path, world: Path) -> None:
    cap = runs.run_stage("caption", out=tmp_path, data_root=world, steps=2, wandb=False,
                         prediction_images=False, **SMALL)
    assert cap.last.is_file() and cap.steps == 2 and cap.init_from is None
    assert cap.config == tmp_path.resolve() / "configs" / "caption.yaml"
    assert "val/caption/loss" in cap.val and cap.csv is not None
    trace = runs.run_stage("trace", out=tmp_path, data_root=world, init_from=cap.last, steps=4,
                           val_every=2, snapshot_every=2, wandb=False, **SMALL)
    assert [p.name for p in trace.snapshots] == ["step00002.ckpt", "step00004.ckpt"]
    assert trace.init_from == cap.last
    hist = trace.val_history(["val/trace/l1"])
    assert [r["step"] for r in hist] == [1, 3] and all("val/trace/l1" in r for r in hist)
    assert any("train/loss" in r for r in trace.history())
    samples = trace.val_samples("trace", limit=2)
    assert len(samples) == 2 and samples[0].task == "trace"
    with pytest.raises(ValueError, match="no validation source"):
        trace.val_samples("densecap")
    from pixelkit import tutorial as tut
    from pixelkit import viz

    grid = tut.trace_snapshots(trace, [s.image_path for s in samples], min_side=64)
    single = viz.side_by_side([Image.new("RGB", (64, 64))] * 2)
    assert grid.height == 3 * single.height  # start + 2 snapshots
    # a run of the same name replaces the earlier one (no stale snapshots)
    again = runs.run_stage("trace", out=tmp_path, data_root=world, init_from=cap.last, steps=2,
                           snapshot_every=2, wandb=False, **SMALL)
    assert [p.name for p in again.snapshots] == ["step00002.ckpt"]
    # a chain: each stage from the one before (init_from: previous resolves the same)
    chain = runs.run_chain(["caption", "trace"], out=tmp_path / "chain", data_root=world,
                           steps=1, wandb=False, prediction_images=False, **SMALL)
    assert chain["trace"].init_from == chain["caption"].last


def test_a_stage_validates_at_its_last_step_between_sparse_validations(
        tmp_path: Path, world: Path) -> None:
    """ValidateAtEnd (base.yaml): every val_every steps and after the last step, once."""
    run = runs.run_stage("trace", out=tmp_path, data_root=world, steps=5, val_every=3,
                         wandb=False, prediction_images=False,
                         overrides={"model.init_from": None}, **SMALL)
    assert [r["step"] for r in run.val_history(["val/trace/l1"])] == [2, 4]
    assert run.steps == 5 and "val/trace/l1" in run.val
    # a validation step that is also the last one runs once
    again = runs.run_stage("trace", out=tmp_path, data_root=world, steps=4, val_every=2,
                           wandb=False, prediction_images=False,
                           overrides={"model.init_from": None}, **SMALL)
    assert [r["step"] for r in again.val_history(["val/trace/l1"])] == [1, 3]


# --------------------------------------------------------------------------- studies


def _rows(csv_path: Path) -> list[dict[str, str]]:
    with open(csv_path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_study_changes_what_it_says(tmp_path: Path, world: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_SILENT", "true")
    study = runs.run_study("trace", "model.loss.point_weight", [0.5, 8.0], seeds=[0, 1],
                           out=tmp_path, data_root=world, steps=2,
                           overrides={"trainer.log_every_n_steps": 1, "model.init_from": None},
                           **SMALL)
    assert [(v, s) for v, s, _ in study.runs] == [(0.5, 0), (0.5, 1), (8.0, 0), (8.0, 1)]
    for value, seed, run in study.runs:
        cfg = run.resolved()
        assert cfg["model"]["init_args"]["model"]["loss"]["point_weight"] == value
        assert cfg["seed_everything"] == seed
        # what the stage logged as its hyperparameters carries the value too
        hparams = yaml.safe_load((run.dir / "csv" / "hparams.yaml").read_text())
        assert hparams["model"]["loss"]["point_weight"] == value
        ckpt = torch.load(run.last, weights_only=True)
        assert ckpt["pixelkit"]["config"]["loss"]["point_weight"] == value
    # Same seed, same start: step 0's losses are the same for both weights, and the total is
    # text + weight x point; after one update with a different weight the point loss is not
    # the same (bit for bit: the CPU run is deterministic, so equal weights would give equal
    # numbers; Adam's first step hides the weight's scale, not its direction).
    logged = {v: [r for r in _rows(run.csv) if r.get("train/point")]
              for v, s, run in study.runs if s == 0}
    for w, rows in logged.items():
        text, point, total = (float(rows[0][k]) for k in ("train/text", "train/point",
                                                          "train/loss"))
        assert total == pytest.approx(text + w * point, rel=1e-5)
    assert logged[0.5][0]["train/point"] == logged[8.0][0]["train/point"]
    assert logged[0.5][1]["train/point"] != logged[8.0][1]["train/point"]
    table = study.table(["val/trace/l1"])
    assert [r["value"] for r in table] == [0.5, 8.0] and table[0]["val/trace/l1 std"] >= 0
    assert (tmp_path / "summary.md").read_text().count("±") >= 2
    if available("matplotlib"):  # the plots extra
        assert Image.open(tmp_path / "summary.png").size[0] > 500
    loggers = [lg for _, _, r in study.runs for lg in r.resolved()["trainer"]["logger"]]
    groups = {lg["init_args"]["group"] for lg in loggers if "Wandb" in lg["class_path"]}
    if available("wandb"):  # (the core-only job has no W&B: its runs log to CSV alone)
        assert groups == {"trace-point_weight"}  # one W&B group for the study's runs


def test_a_study_that_would_not_change_stops_before_training(tmp_path: Path,
                                                             world: Path) -> None:
    common = {"out": tmp_path, "data_root": world, "wandb": False, **SMALL}
    with pytest.raises(ValueError, match="model.init_args.model.loss.point_weight would not "
                                         "change"):
        runs.plan_study("caption", "model.loss.point_weight", [2, 2.0], **common)
    with pytest.raises(ValueError, match="trainer.max_steps is set twice"):
        runs.plan_study("caption", "trainer.max_steps", [1, 2], steps=3, **common)
    assert not list(tmp_path.glob("runs/*/checkpoints"))  # nothing trained
    # one value (a study run in parts): its seeds may differ in the seed alone
    planned = runs.plan_study("caption", "model.loss.point_weight", [4.0], seeds=[0, 1], **common)
    assert [r.config["seed_everything"] for r in planned] == [0, 1]


def test_pixelkit_study_end_to_end(tmp_path: Path, world: Path) -> None:
    argv = ["study", "--config", "caption", "--param", "model.loss.label_smoothing",
            "--values", "0.0,0.2", "--seeds", "0", "--steps", "1", "--batch-size", "2",
            "--data-root", str(world), "--out", str(tmp_path / "s"), "--no-wandb",
            "--set", "data.val_limit=2", "--set", "trainer.accelerator=cpu"]
    assert main([*argv, "--dry-run"]) == 0
    assert len(list((tmp_path / "s" / "configs").glob("*.yaml"))) == 2
    assert main(argv) == 0
    summary = (tmp_path / "s" / "summary.md").read_text()
    assert "model.loss.label_smoothing" in summary and "| 0.2 |" in summary


# --------------------------------------------------------------------------- the catalog


def test_every_catalog_name_resolves(tmp_path: Path) -> None:
    for name in catalog.names():
        split = catalog.get(name)
        assert split.tasks
        for task in split.tasks:
            assert split.annotation(task, tmp_path).is_relative_to(tmp_path)
        assert split.image_dir(tmp_path).is_relative_to(tmp_path)
    with pytest.raises(ValueError, match="did you mean refcoco/val"):
        catalog.get("refcoco/vall")
    with pytest.raises(ValueError, match="has no 'trace' annotations"):
        catalog.get("refcoco/val").annotation("trace", tmp_path)


def test_synth_writes_exactly_what_the_catalog_names(tmp_path: Path) -> None:
    # A world of its own: the module's shared one also holds what training keeps beside
    # the annotations (the image-size index, the packed-samples caches).
    world = tmp_path / "shapes"
    synthesize(world, num_images=24, image_size=64, seed=0, val_fraction=0.25, progress=False)
    written = {p.relative_to(world).as_posix() for p in world.rglob("*") if p.is_file()}
    expected = set()
    for split in ("train", "val"):
        layout = catalog.get(f"shapes/{split}")
        expected |= {layout.annotation(t, world).relative_to(world).as_posix()
                     for t in layout.tasks}
        ids = range(1, 19) if split == "train" else range(19, 25)
        expected |= {layout.image_path(i, world).relative_to(world).as_posix() for i in ids}
    assert written == expected


def test_last_checkpoint_is_written_at_every_validation(tmp_path: Path, world: Path) -> None:
    """last.ckpt is the final state whether or not val/loss improved: its own callback
    writes it at every validation. (Lightning >= 2.6's ``save_last`` writes it only with a
    new best: a run whose val/loss stopped improving left an old last.ckpt, which the next
    stage started from and the evaluation read; measured on a 1,000-step refer run whose
    last.ckpt stayed at step 200.)"""
    run = runs.run_stage("caption", out=tmp_path, data_root=world, steps=6, val_every=2,
                         overrides={"model.init_from": None}, **SMALL)
    assert torch.load(run.last, weights_only=True)["global_step"] == 6
    callbacks = [c for c in run.resolved()["trainer"]["callbacks"]
                 if c["class_path"].endswith("ModelCheckpoint")]
    assert all(not c["init_args"].get("save_last") for c in callbacks)
    assert any(c["init_args"].get("filename") == "last" and not c["init_args"].get("monitor")
               for c in callbacks)
    best = [p for p in run.last.parent.glob("*.ckpt") if p.name != "last.ckpt"]
    assert len(best) == 1  # the best by val/loss, beside it
