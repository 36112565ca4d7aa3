"""The harness command, a variant added from a temporary folder, and the leaderboard."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from harness.cli import main
from harness.report import leaderboard
from helpers import CUSTOM_MODEL

CUSTOM_RECIPE = '''
from pydantic import BaseModel, ConfigDict

TRAINS = False


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")


def train(backbone, corpus, config, out_dir):
    return None
'''


@pytest.mark.parametrize("command", [[], ["eval"], ["run"], ["tasks"], ["models"], ["leaderboard"]])
def test_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    assert "usage: harness" in capsys.readouterr().out


def test_tasks_and_models_lists(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "generated" in out and "VidoreDocVQARetrieval" in out and "Vidore2ESGReportsRetrieval" in out
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "ocr-text:" in out and "colpali:" in out and "base" in out


def test_run_with_custom_variant_then_leaderboard(text_folder: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    variant = tmp_path / "prefixed"
    variant.mkdir()
    (variant / "model.py").write_text(CUSTOM_MODEL)
    (variant / "recipe.py").write_text(CUSTOM_RECIPE)
    results = tmp_path / "results"
    config = tmp_path / "run.yaml"
    config.write_text(textwrap.dedent(f"""
        name: test
        results: {results}
        backbones:
          - family: ocr-text
            config: {{mode: pooled}}
        variants: [base, {variant}]
        tasks:
          - {text_folder}
    """))
    assert main(["run", str(config)]) == 0
    out = capsys.readouterr().out
    assert "Leaderboard" in out and "prefixed" in out

    csv = (results / "leaderboard.csv").read_text()
    md = (results / "leaderboard.md").read_text()
    assert "TextsetRetrieval" in csv and "| base |" in md and "| prefixed |" in md
    table = leaderboard.build_table(leaderboard.collect(results))
    base = table[table.variant == "base"].iloc[0]
    other = table[table.variant == "prefixed"].iloc[0]
    # the scores come from the MTEB files; the change is against the same backbone's base
    assert other["delta_average"] == pytest.approx(other["average"] - base["average"])
    assert base["TextsetRetrieval"] > 0.5

    # a corrupt or foreign JSON file in results/ is reported and skipped, not fatal
    bad_dir = results / "mteb" / "results" / "x__y" / "r1"
    bad_dir.mkdir(parents=True)
    (bad_dir / "Broken.json").write_text('{"task_name": "Broken", "scores": ')
    (bad_dir / "Foreign.json").write_text(json.dumps({"hello": "world"}))
    assert len(leaderboard.collect(results)) == 2
    assert leaderboard.main(["--results", str(results)]) == 0


def test_bad_config_exits_with_named_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("backbones:\n  - family: ocr-text\n    config: {mode: pooled, chunk: 3}\ntasks: [generated]\n")
    assert main(["run", str(config)]) == 2
    assert "backbones.0.config.chunk: Extra inputs are not permitted" in capsys.readouterr().err
    assert main(["eval", "--task", "NoSuchTask"]) == 2
    assert "unknown task 'NoSuchTask'" in capsys.readouterr().err


def test_empty_results_folder(tmp_path: Path) -> None:
    assert leaderboard.main(["--results", str(tmp_path)]) == 1


def test_root_leaderboard_script_is_the_package_command(tmp_path: Path) -> None:
    # `python leaderboard.py` (the README's command) runs the package's leaderboard: same message, same exit code.
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, str(root / "leaderboard.py"), "--results", str(tmp_path)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 1, done.stderr
    assert f"no results under {tmp_path / 'mteb' / 'results'}" in done.stderr


def test_progress_by_default_quiet_on_request(text_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_PROGRESS", "1")  # restored after the test (main sets it from --quiet)
    assert main(["eval", "--task", str(text_folder), "--results", str(tmp_path / "a")]) == 0
    out, err = capsys.readouterr()
    assert "Searching corpus chunks" in err and "100%" in err  # mteb's bars, on stderr
    assert out.startswith("TextsetRetrieval\tndcg_at_10\t") and out.count("\n") == 1  # stdout: the results only
    assert main(["eval", "--task", str(text_folder), "--results", str(tmp_path / "b"), "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert "%|" not in err and "Searching" not in err and out.startswith("TextsetRetrieval\t")
    from harness.progress import ProgressBar

    assert ProgressBar(True, "queries", 3)._p is None  # --quiet silences the synth engine's bars too
    # --progress (the old opt-in) is still accepted
    assert main(["eval", "--task", str(text_folder), "--results", str(tmp_path / "a"), "--progress"]) == 0
