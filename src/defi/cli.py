"""The `defi` command.

Each subcommand is a thin shell over a function that the tests also call: the function receives the remaining
arguments (a list of strings) and returns an exit code. Subcommands are imported lazily so that `defi --help`
stays fast and a stage's heavy dependencies load only when that stage runs.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Sequence
from importlib import import_module

from defi.errors import DefiError

# name -> ("module:function", one-line help). Two-word names ("data metaworld") form groups.
COMMANDS: dict[str, tuple[str, str]] = {
    "env": ("defi.utils.environment:env_main", "Print versions, device and mixed-precision support."),
    "pretrain-idm": ("defi.train.pretrain_idm:pretrain_idm_main", "Pretrain the inverse dynamics model (GIDM, latent actions)."),
    "pretrain-fdm": ("defi.train.pretrain_fdm:pretrain_fdm_main", "Pretrain the forward dynamics model (GFDM, video diffusion)."),
    "data metaworld": ("defi.data.sources.metaworld:metaworld_main", "Generate Meta-World v3 expert episodes."),
    "data videos": ("defi.data.sources.videos:videos_main", "Ingest a folder of captioned videos (action-free)."),
    "data info": ("defi.data.inspect:info_main", "Summarise an episode store."),
    "data preview": ("defi.data.inspect:preview_main", "Write a GIF of some episodes of a store."),
    "pretrain-idm": ("defi.train.pretrain_idm:pretrain_idm_main", "Pretrain the inverse dynamics model (GIDM, latent actions)."),
    "finetune": ("defi.train.finetune:finetune_main", "Finetune the coupled DeFI policy (or a baseline) on demos."),
    "eval": ("defi.eval.metaworld_eval:eval_main", "Evaluate a saved policy in closed loop on Meta-World."),
    "compare": ("defi.eval.compare:compare_main", "Finetune + evaluate DeFI and both baselines on the same demos."),
    "demo": ("defi.demo.pipeline:demo_main", "The whole pipeline in one command, with report.html (presets quick/full)."),
    "ablate": ("defi.demo.ablate:ablate_main", "The paper's ablation tables (4, 7, 9, Fig. 4) on a finished demo run."),
    "serve": ("defi.serve.cli:serve_main", "Serve a saved policy to robots over websockets (openpi protocol)."),
}


def _usage() -> str:
    lines = [
        "usage: defi [--debug] COMMAND [ARGS...]",
        "",
        "DeFI: pretrain a forward (video) and an inverse (latent-action) dynamics model separately, then couple",
        "them into a policy. Run `defi COMMAND --help` for a command's options.",
        "",
        "commands:",
    ]
    width = max(len(name) for name in COMMANDS) + 2
    for name, (_, help_text) in sorted(COMMANDS.items()):
        lines.append(f"  {name.ljust(width)}{help_text}")
    lines += ["", "options:", "  --debug   show the full traceback on errors", "  --help    show this message"]
    return "\n".join(lines)


def _resolve(argv: list[str]) -> tuple[str | None, list[str]]:
    for words in (2, 1):
        name = " ".join(argv[:words])
        if len(argv) >= words and name in COMMANDS:
            return name, argv[words:]
    return None, argv


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        from defi import __version__

        print(f"defi {__version__}")
        return 0
    name, rest = _resolve(argv)
    if name is None:
        group = [n for n in COMMANDS if n.split()[0] == argv[0]]
        if group:
            print(f"defi {argv[0]}: choose one of: " + ", ".join(sorted(n.split()[1] for n in group)), file=sys.stderr)
        else:
            print(f"defi: error: unknown command {argv[0]!r} (run `defi --help` for the list)", file=sys.stderr)
        return 2
    target, _ = COMMANDS[name]
    module_name, func_name = target.split(":")
    try:
        func = getattr(import_module(module_name), func_name)
        code = func(rest)
        return int(code or 0)
    except DefiError as err:
        if debug:
            traceback.print_exc()
        print(f"defi {name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"defi {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
