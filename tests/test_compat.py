"""The torchvision fix: imports work after it, and it does nothing where torch and torchvision match."""

from __future__ import annotations

import subprocess
import sys

from harness import compat


def test_imports_that_need_torchvision_work_in_a_fresh_interpreter() -> None:
    code = ("import harness, torchvision, peft, colpali_engine; "
            "from transformers import Qwen2VLImageProcessor; print(harness.compat.fix_torchvision())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "already applied"


def test_does_nothing_when_operators_exist(monkeypatch) -> None:
    monkeypatch.setattr(compat, "_APPLIED", False)
    monkeypatch.setattr(compat, "_torchvision_ops_registered", lambda: True)
    assert compat.fix_torchvision() == "nothing to do"
