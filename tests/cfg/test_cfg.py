"""cxr_core.cfg: one strict loader for every task's configuration file, and the CLIs built on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxr_core import cfg, train


@pytest.mark.parametrize("task", cfg.TASKS)
def test_every_task_has_a_commented_default_file(task: str) -> None:
    text = cfg.path(task).read_text()
    assert text.lstrip().startswith("#") and cfg.defaults(task)
    assert cfg.load(task) == cfg.defaults(task)


def test_file_and_overrides_layer_on_the_defaults(tmp_path: Path) -> None:
    f = tmp_path / "recipe.yaml"
    f.write_text("lr_step: 8\nbatch: 16\n")
    out = cfg.load("classify", f, overrides={"batch": 8, "lr": None})
    assert out["lr_step"] == 8 and out["batch"] == 8  # the override wins, None overrides are skipped
    assert out["lr"] == cfg.defaults("classify")["lr"]
    assert cfg.load("classify", overrides={"lr": 1})["lr"] == 1.0  # an int where a float is expected


@pytest.mark.parametrize(("text", "message"), [
    ("lr_stpe: 8\n", "unknown key 'lr_stpe'. Did you mean 'lr_step'?"),
    ("batch: many\n", "'batch' must be int"),
    ("quality_filter: 1\n", "'quality_filter' must be bool"),
    ("- a list\n", "must be a mapping"),
    ("lr: [\n", "not valid YAML"),
])
def test_bad_files_are_refused_with_the_key_named(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(cfg.ConfigError, match=message.replace("(", r"\(").replace("?", r"\?").replace("[", r"\[")):
        cfg.load("classify", f)


def test_missing_file_and_unknown_task() -> None:
    with pytest.raises(cfg.ConfigError, match="Cannot read"):
        cfg.load("segment", "/nonexistent/recipe.yaml")
    with pytest.raises(cfg.ConfigError, match="Unknown task"):
        cfg.load("fly")


def test_train_cli_reads_the_config_and_flags_win(tmp_path: Path) -> None:
    f = tmp_path / "recipe.yaml"
    f.write_text("lr_step: 8\nema: 0.99\nquality_filter: false\n")
    args = train.parse_args(["--model", "vbreathnet", "--config", str(f), "--ema", "0.5"])
    assert (args.lr_step, args.ema, args.no_quality_filter) == (8, 0.5, True)
    assert train.resolved_config(args) == cfg.defaults("classify") | {"lr_step": 8, "ema": 0.5, "quality_filter": False}
    f.write_text("lr_stpe: 8\n")
    with pytest.raises(SystemExit, match="Did you mean 'lr_step'"):
        train.parse_args(["--model", "vbreathnet", "--config", str(f)])


def test_second_stage_keys_from_a_config_file_are_checked(tmp_path: Path, capsys) -> None:
    f = tmp_path / "stage2.yaml"
    f.write_text("schedule: cosine\naugment: acquisition\n")
    args = train.parse_args(["--model", "vbreathnet", "--config", str(f)])
    assert (args.schedule, args.augment, args.init_from) == ("cosine", "acquisition", None)
    for bad, key in (("schedule: linear\n", "schedule"), ("augment: heavy\n", "augment"),
                     (f"init_from: {tmp_path / 'none.pt'}\n", "--init-from")):
        f.write_text(bad)
        with pytest.raises(SystemExit):
            train.parse_args(["--model", "vbreathnet", "--config", str(f)])
        assert key in capsys.readouterr().err


def test_detector_config_accepts_ultralytics_arguments_and_refuses_typos(tmp_path: Path) -> None:
    pytest.importorskip("ultralytics")
    from cxr_core.detection.train import load_config

    f = tmp_path / "det.yaml"
    f.write_text("fliplr: 0.0\nepochs: 2\n")  # fliplr: an ultralytics argument not in our file
    out = load_config(f, imgsz=320)
    assert (out["fliplr"], out["epochs"], out["imgsz"]) == (0.0, 2, 320) and out["plots"] is False
    f.write_text("epoch: 2\n")
    with pytest.raises(cfg.ConfigError, match="Did you mean 'epochs'"):
        load_config(f)


def test_segment_cli_refuses_a_misspelt_recipe(tmp_path: Path) -> None:
    from cxr_core import lungs

    f = tmp_path / "seg.yaml"
    f.write_text("batchsize: 4\n")
    with pytest.raises(SystemExit, match="Did you mean 'batch_size'"):
        lungs._cli(["train", "--config", str(f), "--help"])
