"""``eca-serve serve`` refuses several worker processes, whose SIGTERM would not drain in-flight requests."""

import pytest

from eca_serve.cli import build_parser, main


@pytest.mark.parametrize("workers", ["2", "0"])
def test_serve_refuses_other_than_one_worker(workers: str, tmp_path, capsys) -> None:
    assert main(["serve", "--workers", workers, "--model-repository", str(tmp_path), "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--workers {workers}" in err and "load balancer" in err


def test_serve_help_says_why_one_worker() -> None:
    serve = build_parser()._subparsers._group_actions[0].choices["serve"]
    workers = next(a for a in serve._actions if "--workers" in a.option_strings)
    assert workers.default == 1 and "drain" in workers.help and "SIGTERM" in workers.help
