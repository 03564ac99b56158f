"""The README's commands and example, the console script, the quickstart recipe."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from fourierft.recipes import cli

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_test_command_is_what_ci_runs():
    test_command = re.search(r"\*\*Run the tests\*\*.*?```bash\n(.+?)\n```", README, re.S).group(1)
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci == test_command


def test_readme_example_runs_as_written(tmp_path, monkeypatch):
    code = next(block for block in re.findall(r"```python\n(.+?)```", README, re.S) if "get_fourierft_model" in block)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()


def test_quickstart_trains_saves_reloads_and_merges(tmp_path, capsys):
    from fourierft.recipes import quickstart

    result = quickstart.main(["--out", str(tmp_path / "qs"), "--steps", "250"])
    assert result["accuracy"] > 0.8  # the head alone stays near 0.64
    assert result["reload_diff"] < 1e-5 and result["merge_diff"] < 1e-4
    assert result["adapter_bytes"] < 40_000
    assert "held-out accuracy after training" in capsys.readouterr().out


def test_inspect_summarises_an_adapter(tmp_path, capsys):
    from fourierft.recipes import quickstart

    quickstart.main(["--out", str(tmp_path), "--steps", "1"])
    capsys.readouterr()
    summary = cli.inspect_adapter(str(tmp_path))
    assert summary["peft_type"] == "FOURIERFT" and summary["coefficients"] == 13 * 500
    assert summary["other_parameters"] == 64 * 2 + 2
    cli.main(["inspect", str(tmp_path)])
    assert "bert.encoder.layer.0.attention.self.query" in capsys.readouterr().out


def test_console_script_and_missing_extra_message(monkeypatch):
    result = subprocess.run([sys.executable, "-m", "fourierft.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "quickstart" in result.stdout
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "transformers" else real(name, *a))
    with pytest.raises(SystemExit, match=r"pip install 'fourierft\[hf\]'"):
        cli.main(["quickstart"])


def test_every_recipe_has_the_same_interface():
    pytest.importorskip("transformers")
    import dataclasses

    for name in cli.RECIPES:
        module = cli.recipe(name)
        assert module.NAME == name and module.TASKS and dataclasses.is_dataclass(module.Config)
        for function in ("train", "evaluate", "predict", "merge"):
            assert callable(getattr(module, function)), (name, function)
        assert {"train_file", "eval_file", "model", "output_dir"} <= {f.name for f in dataclasses.fields(module.Config)}, name
    tasks = [t for name in cli.RECIPES for t in cli.recipe(name).TASKS]
    assert len(tasks) == len(set(tasks))  # a task names one recipe


def test_train_help_lists_every_setting_and_demo_options_are_described(capsys):
    pytest.importorskip("yaml")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for setting in ("n_frequency=", "text_column='text'", "label_smoothing=", "image_size=", "text_column=", "resume=False", "glue-rte-roberta-base", "e2e-gpt2-medium"):
        assert setting in text, setting
    assert "Resume from the last checkpoint" in text  # attribute docstrings become the help
    with pytest.raises(SystemExit):
        cli.main(["demo", "--help"])
    demo_help = capsys.readouterr().out
    assert "--train-size" in demo_help and "training snippets" in demo_help
