"""Every numeric flag of `resnets train` refuses non-finite and out-of-range values with one
line and exit 2 before anything is read or written; TrainConfig (the Python API) applies the
same rules."""

from __future__ import annotations

import math

import pytest

from resnets import ResnetsError
from resnets.train import TrainConfig
from resnets.train.config import NUMBER_RULES

# flag -> values refused (each one case), then one accepted value
REFUSED = {
    "epochs": ["0", "-1", "1.5", "x"], "batch-size": ["0", "-8"], "lr": ["inf", "nan", "0", "-0.1", "1e999"],
    "head-lr": ["nan", "0"], "weight-decay": ["nan", "-1", "inf"], "momentum": ["nan", "-1", "1", "inf"],
    "warmup-epochs": ["-1", "nan"], "label-smoothing": ["1", "-0.1", "nan"], "mixup": ["nan", "-1"],
    "cutmix": ["nan", "-0.5", "inf"], "ema": ["1", "nan", "-0.1"], "accum-steps": ["0"],
    "img-size": ["1", "-32", "0", "100000"], "progressive-resize": ["0", "1.5", "nan"],
    "progressive-delay": ["-0.1", "2", "nan"], "progressive-finetune": ["nan", "1.1"],
    "val-split": ["-0.1", "1", "nan"], "num-classes": ["0", "-3"], "unfreeze-after": ["-1"],
    "procs": ["0", "-2"], "max-minutes": ["0", "-1", "nan", "inf"], "val-every": ["0"], "stop-after": ["0"],
    "seed": ["-1", str(2 ** 64), "1.0"], "workers": ["-1"], "in-chans": ["0", "65", "2", "x"],
    "effective-beta": ["0", "1", "nan"], "random-erasing": ["-0.1", "1.5", "nan"],
    "color-jitter": ["-1", "nan", "11"], "aug-repeats": ["0", "-1", "1.5"],
    "norm-bias-lr-scale": ["0", "-1", "inf", "1e5"], "translate": ["-1", "65", "1.5"],
    "grad-clip": ["0", "-1", "nan", "inf"], "minutes": ["0", "-1", "nan", "inf"],
    "whiten-bias-epochs": ["0", "-2", "nan"], "muon-momentum": ["0", "1", "-0.5", "nan"],
    "muon-ns-steps": ["0", "21", "2.5", "-1"],
}


@pytest.mark.parametrize("flag,value", [(f, v) for f, values in REFUSED.items() for v in values])
def test_train_flag_refused(tmp_path, run_cli, flag, value):
    out = tmp_path / "run"
    status, stdout, err = run_cli("train", "--model", "resnet20", "--data", str(tmp_path / "nodata"),
                                  "--out", str(out), f"--{flag}", value)
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and "Traceback" not in err and stdout == ""
    assert lines[0].startswith(f"resnets: error: ") and f"--{flag}" in lines[0], lines
    # refused before anything was written (--img-size 1 is checked against the model, once the lock is held)
    assert not out.exists() or [p.name for p in out.iterdir()] == [".lock"]


def test_every_numeric_flag_has_a_rule():
    flags = {name.replace("-", "_") for name in REFUSED}
    assert flags == set(NUMBER_RULES) - {"log_interval"}


@pytest.mark.parametrize("name,value", [("lr", math.inf), ("lr", math.nan), ("momentum", math.nan),
                                        ("weight_decay", -1.0), ("cutmix", math.nan), ("seed", -1),
                                        ("img_size", -32), ("epochs", True), ("batch_size", "8"),
                                        ("ema", 1.0), ("workers", 2.5), ("log_interval", 0)])
def test_python_api_applies_the_same_rules(tmp_path, name, value):
    with pytest.raises(ResnetsError, match=f"--{name.replace('_', '-')}") as error:
        TrainConfig(model="resnet20", out=str(tmp_path), **{name: value})
    assert "\n" not in str(error.value)


def test_accepted_edge_values():
    config = TrainConfig(model="resnet20", momentum=0.0, weight_decay=0.0, label_smoothing=0.0, ema=0.0,
                         seed=0, workers=0, val_split=0.5, lr=1e-9, progressive_resize=1.0, img_size=4096)
    assert config.lr == 1e-9 and config.img_size == 4096
