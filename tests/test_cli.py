import subprocess
import sys

from defi.cli import COMMANDS, main


def test_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_unknown_command_is_one_clear_line(capsys):
    assert main(["frobnicate"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown command 'frobnicate'" in err[0]


def _boom(argv):
    from defi.errors import ConfigError

    raise ConfigError("config key trainer.lr=-1.0: expected a positive learning rate")


def test_user_errors_are_one_line_without_traceback(monkeypatch, capsys):
    monkeypatch.setitem(COMMANDS, "boom", ("test_cli:_boom", "raises a user error"))
    assert main(["boom"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["defi boom: error: config key trainer.lr=-1.0: expected a positive learning rate"]
    assert main(["--debug", "boom"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_console_module_runs():
    proc = subprocess.run([sys.executable, "-m", "defi", "env"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and '"device"' in proc.stdout


def test_every_command_parses_help(capsys):
    """Each command's own parser builds (presets, config classes) and prints its options."""
    for name in COMMANDS:
        try:
            code = main([*name.split(), "--help"])
        except SystemExit as exit_info:
            code = exit_info.code
        assert code == 0, name
        assert "usage" in capsys.readouterr().out.lower(), name
