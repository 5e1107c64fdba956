"""Command-line errors: one ``error: ...`` line on stderr and exit status 2, tracebacks only on
request."""

import subprocess
import sys

import pytest
from stpn_core.cli import ArgumentParser, CommandError, run_command


def _main(argv):
    parser = ArgumentParser(prog="demo")
    parser.add_argument("--episodes", type=int, required=True)
    args = parser.parse_args(argv)
    if args.episodes <= 0:
        raise ValueError(f"--episodes must be a positive integer, got {args.episodes}")
    if args.episodes == 7:
        raise CommandError("seven is\nunlucky")
    if args.episodes == 8:
        raise RuntimeError("a bug")
    return 0


@pytest.mark.parametrize(("argv", "line"), [
    (["--episodes", "-3"], "error: --episodes must be a positive integer, got -3"),
    (["--episodes", "7"], "error: seven is unlucky"),
    (["--episodes", "8"], "error: RuntimeError: a bug"),
    (["--episodes", "x"], "error: argument --episodes: invalid int value: 'x' (see demo --help)"),
    ([], "error: the following arguments are required: --episodes (see demo --help)"),
])
def test_every_error_is_one_line_with_exit_status_2(capsys, argv, line):
    with pytest.raises(SystemExit) as caught:
        run_command(_main, argv)
    assert caught.value.code == 2
    assert capsys.readouterr().err.splitlines() == [line]


def test_success_exits_0(capsys):
    with pytest.raises(SystemExit) as caught:
        run_command(_main, ["--episodes", "2"])
    assert caught.value.code == 0 and capsys.readouterr().err == ""


def test_debug_flag_and_environment_show_the_traceback(capsys, monkeypatch):
    with pytest.raises(SystemExit):
        run_command(_main, ["--episodes", "8", "--debug"])
    err = capsys.readouterr().err
    assert "Traceback" in err and err.splitlines()[-1] == "error: RuntimeError: a bug"
    monkeypatch.setenv("STPN_DEBUG", "1")
    with pytest.raises(SystemExit):
        run_command(_main, ["--episodes", "8"])
    assert "Traceback" in capsys.readouterr().err


def test_a_real_process_prints_no_traceback():
    code = ("from stpn_core.cli import ArgumentParser, run_command\n"
            "def main(argv):\n"
            "    ArgumentParser(prog='p').parse_args(argv)\n"
            "    open('/nonexistent/config.yaml')\n"
            "run_command(main)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "error: [Errno 2] No such file or directory: '/nonexistent/config.yaml'"]
