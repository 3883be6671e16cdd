"""The `defi` command: ONE table of subcommands, each a (config class, run function) pair.

Every subcommand is parsed the same way (tyro, `defi.config.parse_cli`): the config class's presets
(`--preset NAME`, the class's `default_preset` when not given), then `--config FILE.json`, then field overrides
(`--trainer.max-steps 500`). The run function receives the config; the functions are what the tests call.
Subcommands are imported lazily so that `defi --help` stays fast and a stage's heavy dependencies load only when
that stage runs.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import import_module
from typing import Any

from defi.errors import DefiError


@dataclass(frozen=True)
class Command:
    config: str  # "module:ConfigClass"
    run: str  # "module:function" taking the config
    help: str
    summary: str = ""  # optional "module:function" turning run's result into what is printed

    def load(self, target: str) -> Any:
        module, name = target.split(":")
        return getattr(import_module(module), name)


COMMANDS: dict[str, Command] = {
    "env": Command("defi.utils.environment:EnvConfig", "defi.utils.environment:run",
                   "Print versions, device and mixed-precision support."),
    "data metaworld": Command("defi.data.sources.metaworld:MetaWorldGenConfig", "defi.data.sources.metaworld:run",
                              "Generate Meta-World v3 expert episodes."),
    "data videos": Command("defi.data.sources.videos:VideosConfig", "defi.data.sources.videos:run",
                           "Ingest a folder of captioned videos (action-free)."),
    "data lerobot": Command("defi.data.sources.lerobot:LeRobotImportConfig",
                            "defi.data.sources.lerobot:run_lerobot_import",
                            "Import a local LeRobot dataset (v3.0 / v2.x) into an episode store."),
    "data export-lerobot": Command("defi.data.sources.lerobot:LeRobotExportConfig",
                                   "defi.data.sources.lerobot:run_lerobot_export",
                                   "Write an episode store as a LeRobot v3.0 dataset."),
    "data info": Command("defi.data.inspect:InfoConfig", "defi.data.inspect:info", "Summarise an episode store."),
    "data preview": Command("defi.data.inspect:PreviewConfig", "defi.data.inspect:preview",
                            "Write a GIF of some episodes of a store."),
    "pretrain-fdm": Command("defi.train.pretrain_fdm:PretrainFDMConfig", "defi.train.pretrain_fdm:run",
                            "Pretrain the forward dynamics model (GFDM, video diffusion).",
                            "defi.train.pretrain_fdm:summary"),
    "pretrain-idm": Command("defi.train.pretrain_idm:PretrainIDMConfig", "defi.train.pretrain_idm:run",
                            "Pretrain the inverse dynamics model (GIDM, latent actions).",
                            "defi.train.pretrain_idm:summary"),
    "finetune": Command("defi.train.finetune:FinetuneConfig", "defi.train.finetune:run",
                        "Finetune the coupled DeFI policy (or a baseline) on demos.", "defi.train.finetune:summary"),
    "eval": Command("defi.eval.metaworld:EvalRunConfig", "defi.eval.metaworld:run",
                    "Evaluate a saved policy in closed loop on Meta-World."),
    "eval-calvin": Command("defi.eval.calvin:CalvinEvalRunConfig", "defi.eval.calvin:run_calvin_eval",
                           "Evaluate a saved policy with CALVIN's long-horizon protocol (needs calvin_env)."),
    "eval-calvin-merge": Command("defi.eval.calvin:CalvinMergeConfig", "defi.eval.calvin:run_calvin_merge",
                                 "Combine sharded eval-calvin runs into one results.json."),
    "compare": Command("defi.experiments.compare:CompareConfig", "defi.experiments.compare:run",
                       "Finetune + evaluate DeFI and both baselines on the same demos."),
    "study": Command("defi.experiments.study:StudyConfig", "defi.experiments.study:run",
                     "Does pretraining pay off? DeFI vs no pretraining vs image DP over demo counts and seeds."),
    "demo": Command("defi.experiments.demo.config:DemoConfig", "defi.experiments.demo.pipeline:run",
                    "The whole pipeline in one command, with report.html (presets tiny/quick/full)."),
    "ablate": Command("defi.experiments.demo.ablate:AblateConfig", "defi.experiments.demo.ablate:run",
                      "The paper's ablation tables (4, 7, 9, Fig. 4) on a finished demo run."),
    "serve": Command("defi.serve.cli:ServeCommand", "defi.serve.cli:run",
                     "Serve a saved policy to robots over websockets (openpi protocol)."),
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
    for name, command in sorted(COMMANDS.items()):
        lines.append(f"  {name.ljust(width)}{command.help}")
    lines += ["", "options:", "  --debug   show the full traceback on errors", "  --help    show this message"]
    return "\n".join(lines)


def _resolve(argv: list[str]) -> tuple[str | None, list[str]]:
    for words in (2, 1):
        name = " ".join(argv[:words])
        if len(argv) >= words and name in COMMANDS:
            return name, argv[words:]
    return None, argv


def parse(argv: Sequence[str]) -> tuple[str, Any]:
    """(command name, its config) for a `defi ...` command line (without the leading "defi"); runs nothing."""
    from defi.config import parse_cli

    name, rest = _resolve(list(argv))
    if name is None:
        first = argv[0] if argv else ""
        group = sorted(n.split()[1] for n in COMMANDS if n.split()[0] == first and " " in n)
        if group:
            raise DefiError(f"defi {first}: choose one of: {', '.join(group)}")
        raise DefiError(f"unknown command {first!r} (run `defi --help` for the list)")
    command = COMMANDS[name]
    cls = command.load(command.config)
    return name, parse_cli(cls, rest, prog=f"defi {name}", description=(cls.__doc__ or command.help).strip())


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
    name = " ".join(argv[:2]) if " ".join(argv[:2]) in COMMANDS else argv[0]
    try:
        name, cfg = parse(argv)
        command = COMMANDS[name]
        result = command.load(command.run)(cfg)
        if command.summary:
            summary: Callable[[Any], Any] = command.load(command.summary)
            text = summary(result)
            if isinstance(text, dict):
                import json

                text = json.dumps(text, indent=2, default=str)
            print(text)
        return int(result) if isinstance(result, int) and not isinstance(result, bool) else 0
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
