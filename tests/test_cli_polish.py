"""The CLI's rough edges of issue 19: help with defaults, one-line errors, plain tables, bars that fit."""

from __future__ import annotations

import argparse
import io
import socket
import stat
import warnings
from pathlib import Path

import pytest

from eca_serve.cli import all_parsers, build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def option_actions() -> list[tuple[str, argparse.Action, str]]:
    """(command path, action, rendered help) of every argument of every (sub-)command."""
    found = []
    for parser in all_parsers(build_parser()):
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            found.append((parser.prog, action, formatter._expand_help(action) if action.help else ""))
    return found


def test_every_argument_has_help_and_every_value_option_a_default() -> None:
    missing_help = [f"{prog} {a.dest}" for prog, a, text in option_actions() if not text.strip()]
    assert missing_help == []
    no_default = [f"{prog} {a.option_strings[0]}" for prog, a, text in option_actions()
                  if a.option_strings and a.nargs != 0 and not a.required and "default" not in text]
    assert no_default == []


def test_defaults_are_rendered_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["train", "classify", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "passes over the training set (default: 10)" in text and "(default: 0.05)" in text
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "default: 127.0.0.1 (ECA_SERVE_HOST)" in text and "--no-ui" in text


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_predict_a_missing_file_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", "missing.png", "--model", "shapes_classifier", "--model-repository", str(ROOT / "models")]) == 2
    assert "no such image file: missing.png" in one_line_error(capsys)


def test_predict_an_unknown_model_names_those_there_are(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["predict", str(ROOT / "examples" / "star.png"), "--model", "nope", "--model-repository", str(ROOT / "models")])
    assert code == 2
    err = one_line_error(capsys)
    assert "'nope'" in err and "shapes_classifier" in err and "shapes_detector" in err


def test_serve_fails_on_a_taken_port_before_loading_anything(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--model-repository", str(ROOT / "models"), "--port", str(port), "--grpc-port", "0"]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in one_line_error(capsys)


def test_no_ui_flag_turns_the_page_off() -> None:
    from eca_serve.cli.serve_commands import _settings

    parser = build_parser()
    assert _settings(parser.parse_args(["serve", "--no-ui"])).ui is False
    assert _settings(parser.parse_args(["serve"])).ui is True


def test_models_table_has_no_markup(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--task", "classification"]) == 0
    out = capsys.readouterr().out
    assert "eca_resnet50" in out
    for markup in ("``", "`__", "<http", "[/"):
        assert markup not in out


def test_table_cells_are_never_rich_markup(capsys: pytest.CaptureFixture[str]) -> None:
    from eca_serve.cli._output import print_table

    print_table("t", ["doc"], [["weights [B, C] and [bold]not bold[/bold]"]])
    assert "[bold]not bold[/bold]" in capsys.readouterr().out


def test_training_bar_shows_steps_and_time_left_within_80_columns() -> None:
    from rich.console import Console

    from eca_serve.cli.train_commands import report_step, training_progress

    now = [0.0]
    console = Console(file=io.StringIO(), width=200, force_terminal=True, color_system=None)
    bar = training_progress(console=console, get_time=lambda: now[0])
    task = bar.add_task("starting", total=None, info="")
    report = {"epoch": 3, "step": 250, "total_steps": 1000, "loss": 1.23456, "img_per_s": 412.7}
    report_step(bar, task, report, epochs=10)  # a resumed run: steps 1..249 ran before, they are not speed
    now[0] = 10.0
    report_step(bar, task, {**report, "step": 260}, epochs=10)  # 10 steps in 10 s: 740 s left
    console.print(bar.get_renderable())
    lines = [line.rstrip() for line in console.file.getvalue().splitlines() if line.strip()]
    assert len(lines) == 1 and len(lines[0]) <= 80, lines
    assert "epoch 3/10" in lines[0] and "260/1000" in lines[0] and "loss 1.235 413 img/s" in lines[0]
    assert "12:20" in lines[0], lines[0]  # 740 s left


def test_data_shapes_shows_progress_on_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "shapes", "--kind", "classify", "--out", str(tmp_path), "--count", "8", "--size", "32"]) == 0
    captured = capsys.readouterr()
    assert '"written": 8' in captured.out and "8/8" in captured.err


def test_export_is_quiet_and_weights_are_world_readable(tmp_path: Path) -> None:
    from tests.serving_utils import export_small_classifier

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_small_classifier(tmp_path)
    jit = [str(w.message) for w in caught if issubclass(w.category, FutureWarning) and "torch.jit" in str(w.message)]
    assert jit == []
    entry = tmp_path / "shapes_small" / "1"
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in entry.iterdir() if p.is_file()}
    assert modes["weights.safetensors"] == 0o644
    assert set(modes.values()) == {0o644}, modes
