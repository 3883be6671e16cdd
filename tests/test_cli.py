import os
import subprocess
import sys

from defi.cli import COMMANDS, Command, main, parse


def test_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_unknown_command_is_one_clear_line(capsys):
    assert main(["frobnicate"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown command 'frobnicate'" in err[0]


def _boom(cfg):
    from defi.errors import ConfigError

    raise ConfigError("config key trainer.lr=-1.0: expected a positive learning rate")


def test_user_errors_are_one_line_without_traceback(monkeypatch, capsys):
    monkeypatch.setitem(COMMANDS, "boom", Command("defi.utils.environment:EnvConfig", "test_cli:_boom", "a user error"))
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


def _readme_commands() -> list[list[str]]:
    """Every `defi ...` command line in the README's shell code blocks (continuation lines joined, comments cut)."""
    import shlex
    from pathlib import Path

    lines = (Path(__file__).resolve().parents[1] / "README.md").read_text().splitlines()
    commands, block, language = [], None, ""
    for line in lines:
        if line.startswith("```"):
            if block is None:
                block, language = [], line[3:].strip()
            else:
                if language in ("", "bash", "sh"):
                    text = "\n".join(block).replace("\\\n", " ")
                    for command in text.splitlines():
                        command = command.split(" #", 1)[0].strip()
                        while command and "=" in command.split(" ", 1)[0] and not command.startswith("defi "):
                            command = command.split(" ", 1)[1] if " " in command else ""  # VAR=value prefixes
                        if command.startswith("defi "):
                            commands.append(shlex.split(command)[1:])
                block = None
        elif block is not None:
            block.append(line)
    return commands


def test_every_readme_command_parses(tmp_path):
    """The README's commands are what users type first: each must parse into its config (nothing runs). A
    `--config FILE` the README writes just before (echo ... > FILE) is stood in for by an empty JSON file."""
    commands = _readme_commands()
    assert len(commands) >= 25
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    for argv in commands:
        argv = [str(empty) if i and argv[i - 1] == "--config" and not os.path.exists(a) else a
                for i, a in enumerate(argv)]
        name, cfg = parse(argv)
        assert name in COMMANDS and cfg is not None, argv
