"""The demo report: `report.json` (everything, machine-readable), `report.md` and a self-contained `report.html`
(pictures and videos embedded), written from what the demo's stages left in the run directory.

Every figure in it is read from a stage's output files; nothing is typed in. Where the paper states an ordering
(DeFI above both baselines; the ablation tables' rows), the report says whether this run reproduced it, with a
95% interval for each difference of success rates (Newcombe's method from the two Wilson intervals), so a
"held" that is within noise is called that.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from defi.eval.stats import pct, points, verdict

LABELS = {"defi": "DeFI (pretrained GFDM + GIDM)", "defi-scratch": "no pretraining (same architecture)",
          "image_dp": "image diffusion policy"}
# paper Tables 1-3: DeFI above Diffusion Policy; Table 4: full pretraining above none
PAPER_ORDER = [("defi", "defi-scratch"), ("defi", "image_dp")]


# ------------------------------------------------------------------------------------------------ statistics
# ------------------------------------------------------------------------------------------------ reading
def _json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _latest(directory: Path, pattern: str) -> Path | None:
    files = sorted(directory.glob(pattern))
    return files[-1] if files else None


def collect(run_dir: Path) -> dict[str, Any]:
    from defi.utils.environment import environment_info

    compare_dir = run_dir / "compare"
    compare = _json(compare_dir / "compare.json") or {}
    variants = {}
    for name in compare:
        metrics = _json(compare_dir / name / "metrics.json") or {}
        variants[name] = {**compare[name], "parameters": metrics.get("parameters"),
                          "eval_wall_time_s": (_json(compare_dir / name / "eval" / "metrics.json") or {}).get("wall_time_s")}
    stages = _json(run_dir / "stages.json") or {}
    report: dict[str, Any] = {
        "run_dir": str(run_dir),
        "config": _json(run_dir / "config.json"),
        "stages": {k: {"wall_s": v.get("wall_s"), "finished": v.get("finished")} for k, v in stages.items()},
        "total_wall_s": round(sum(v.get("wall_s") or 0 for v in stages.values()), 1),
        "data": {k: stages.get(k, {}).get("summary") for k in ("corpus", "demos")},
        "gfdm": (_json(run_dir / "gfdm" / "metrics.json") or {}).get("held_out"),
        "gidm": (_json(run_dir / "gidm" / "metrics.json") or {}).get("held_out"),
        "latent_actions": stages.get("latents", {}).get("summary"),
        "comparison": variants,
        "verdicts": [verdict(a, b, variants, LABELS) for a, b in PAPER_ORDER if a in variants and b in variants],
        "latency": _json(run_dir / "latency.json"),
        "ablation": _json(run_dir / "ablate" / "ablate.json"),
        "environment": environment_info(),
    }
    cfg = report["config"] or {}
    report["seeds"] = {"demo": cfg.get("seed"), "evaluation_seed_offset": (cfg.get("finetune") or {}).get("eval", {}).get("seed_offset")}
    return report


# ------------------------------------------------------------------------------------------------ figures
def learning_curves(run_dir: Path, out: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("GFDM pretraining (denoising loss)", {"GFDM": run_dir / "gfdm" / "metrics.jsonl"}),
              ("GIDM pretraining (feature prediction loss)", {"GIDM": run_dir / "gidm" / "metrics.jsonl"}),
              ("finetuning (action denoising loss)",
               {LABELS.get(p.name, p.name): p / "metrics.jsonl" for p in sorted((run_dir / "compare").glob("*"))
                if (p / "metrics.jsonl").is_file()})]
    panels = [(t, files) for t, files in panels if any(f.is_file() for f in files.values())]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (title, files) in zip(axes[0], panels):
        for label, path in files.items():
            rows = [r for r in _jsonl(path) if "loss" in r]
            if rows:
                ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def success_chart(variants: dict[str, Any], out: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    if not variants:
        return None
    tasks = list(next(iter(variants.values()))["per_task"]) + ["all tasks"]
    width = 0.8 / len(variants)
    fig, ax = plt.subplots(figsize=(1.6 * len(tasks) + 2, 3.8))
    for i, (name, row) in enumerate(variants.items()):
        stats = [row["per_task"][t] for t in tasks[:-1]] + [row["overall"]]
        rate = np.array([100 * s["success_rate"] for s in stats])
        low = rate - np.array([100 * s["ci95_low"] for s in stats])
        high = np.array([100 * s["ci95_high"] for s in stats]) - rate
        ax.bar(np.arange(len(tasks)) + i * width, rate, width, yerr=[low, high], capsize=3,
               label=LABELS.get(name, name))
    ax.set_xticks(np.arange(len(tasks)) + width * (len(variants) - 1) / 2)
    ax.set_xticklabels([t.removesuffix("-v3") for t in tasks], fontsize=8)
    ax.set_ylabel("success % (95% Wilson CI)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


# ------------------------------------------------------------------------------------------------ text
def success_table(variants: dict[str, Any]) -> str:
    names = list(variants)
    tasks = list(variants[names[0]]["per_task"])
    lines = ["| task | " + " | ".join(LABELS.get(n, n) for n in names) + " |", "|---" * (len(names) + 1) + "|"]
    for t in tasks:
        lines.append(f"| {t} | " + " | ".join(pct(variants[n]["per_task"][t]) for n in names) + " |")
    lines.append("| **all** | " + " | ".join(f"**{pct(variants[n]['overall'])}**" for n in names) + " |")
    if all(variants[n].get("vision_check") for n in names):
        # the vision-reliance check: the same episodes with another scene's image held for the episode
        lines.append("| all, shown another scene's image | " + " | ".join(
            pct(variants[n]["vision_check"]["wrong_scene"]["overall"]) for n in names) + " |")
        lines.append("| **vision reliance** (points, real - other scene) | " + " | ".join(
            f"**{points(variants[n]['vision_check']['difference'])}**" for n in names) + " |")
    return "\n".join(lines)


def _fmt(x: Any, digits: int = 4) -> str:
    return f"{x:.{digits}g}" if isinstance(x, (int, float)) else str(x)


def markdown(report: dict[str, Any]) -> str:
    from defi.eval.latency import latency_table

    out = ["# DeFI demo report", ""]
    cfg = report.get("config") or {}
    variants = report["comparison"]
    if variants:
        ft = cfg.get("finetune", {})
        demos = report["data"].get("demos") or {}
        out += ["## Closed-loop success on Meta-World", "",
                f"Finetuned on {demos.get('episodes', '?')} labeled demonstrations ({cfg.get('demos', {}).get('episodes_per_task', '?')} per task, "
                f"{ft.get('data', {}).get('val_fraction', 0) * 100:.0f}% of them held out for validation) for "
                f"{ft.get('trainer', {}).get('max_steps', '?')} steps per policy; evaluated on "
                f"{ft.get('eval', {}).get('episodes_per_task', '?')} episodes per task at object positions absent from "
                f"all training data, up to {ft.get('eval', {}).get('max_episode_steps', '?')} steps. Success % with "
                "Wilson 95% intervals." + (
                    " The vision-reliance rows run the same episodes with every camera image replaced, for the whole "
                    "episode, by the first frame of another episode's scene (other positions; the proprio state "
                    "stays real): a policy that uses its camera loses success there (paired bootstrap 95% interval)."
                    if all(v.get("vision_check") for v in variants.values()) else ""),
                "", success_table(variants), "", "![success](assets/success.png)", ""]
        out += ["### Did the paper's ordering hold?", ""] + [f"- {v['text']}" for v in report["verdicts"]] + [""]
        if any(v["status"] != "held" for v in report["verdicts"]):
            out += ["Where a row says \"within noise\" or \"not reproduced\", this run cannot tell the policies apart "
                    "or ranks them differently than the paper: the CPU-sized models, the few minutes of training and "
                    "the few evaluation episodes are far from the paper's setting.", ""]
    g = report.get("gfdm") or {}
    if g:
        out += ["## Forward dynamics (GFDM) on held-out corpus clips", "",
                f"Decoded future-frame MSE: sampled {_fmt(g.get('model_mse'))}, one denoising step "
                f"{_fmt(g.get('one_step_mse'))}, copying the current frame {_fmt(g.get('copy_mse'))} "
                f"(ratio sampled / copy {_fmt(g.get('mse_ratio_model_over_copy'), 3)}; one step / copy on the half of "
                f"the clips that move most {_fmt(g.get('moving_mse_ratio_one_step_over_copy'), 3)}). "
                "Real | sampled | one-step: "
                "![predicted vs real](assets/gfdm_predictions.gif)", ""]
    i = report.get("gidm") or {}
    if i:
        out += ["## Inverse dynamics (GIDM) on the labeled demos (never trained on)", "",
                f"Feature prediction MSE / copy-e_t {_fmt(i.get('mse_over_copy'), 3)}; codes used "
                f"{_fmt(i.get('codes_used_fraction'), 3)} of the codebook (perplexity {_fmt(i.get('code_perplexity'), 3)}); "
                f"linear probe R^2 to the true actions: latent actions {_fmt(i.get('probe_r2_latent_action'), 3)} vs "
                f"frame-feature difference {_fmt(i.get('probe_r2_feature_diff'), 3)}.", ""]
    la = report.get("latent_actions") or {}
    if la:
        out += [f"Latent actions of {la.get('clips')} demo clips: probe R^2 to the end-effector displacement "
                f"{_fmt(la.get('ee_motion_r2_latent_action'), 3)} (latent actions) vs "
                f"{_fmt(la.get('ee_motion_r2_feature_diff'), 3)} (feature difference).", "",
                "![latent actions](assets/latent_actions.png)", ""]
    lat = report.get("latency")
    if lat:
        out += ["## Inference latency of the finetuned DeFI policy (paper Table 13 shape)", ""]
        for key, title in (("all_threads", "torch's default thread count"), ("one_thread", "as each evaluation worker runs it")):
            if key in lat:
                out += [f"Batch 1, {lat[key]['threads']} thread(s) ({title}), median of {lat[key]['repeats']} calls:", "",
                        latency_table(lat[key]), ""]
    out += ["## Learning curves", "", "![learning curves](assets/learning_curves.png)", ""]
    if report.get("ablation"):
        out += ["## Ablations (`defi ablate`)", "", ablation_markdown(report["ablation"]), ""]
    env = report["environment"]
    out += ["## Run", "", "| stage | wall time (s) |", "|---|---|"]
    out += [f"| {k} | {v['wall_s']} |" for k, v in report["stages"].items()]
    out += [f"| **total** | **{report['total_wall_s']}** |", "",
            f"Machine: {env.get('platform')}, {env.get('processor')}, {env.get('cpu_count')} CPUs, device "
            f"{env.get('device')}{' (' + str(env.get('cuda_device')) + ')' if env.get('cuda_device') else ''}; "
            f"Python {env.get('python')}; " + ", ".join(f"{k} {v}" for k, v in (env.get("versions") or {}).items()),
            "", f"Seeds: demo seed {report['seeds']['demo']} (data, training, evaluation); evaluation positions from "
            f"seed offset {report['seeds']['evaluation_seed_offset']}.", ""]
    return "\n".join(out)


def _data_uri(path: Path) -> str:
    mime = {".png": "image/png", ".gif": "image/gif", ".mp4": "video/mp4"}[path.suffix]
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


def _md_to_html(text: str, assets: Path) -> str:
    """The report's own small markdown subset (headings, lists, tables, images, bold) as HTML."""
    import re

    parts, table = [], []

    def inline(s: str) -> str:
        s = html.escape(s)
        s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
        s = re.sub(r"`(.+?)`", r"<code>\1</code>", s)

        def image(m: re.Match) -> str:
            path = assets.parent / html.unescape(m.group(2))
            return f'<img alt="{m.group(1)}" src="{_data_uri(path)}">' if path.is_file() else ""

        return re.sub(r"!\[(.*?)\]\((.+?)\)", image, s)

    def flush() -> None:
        if table:
            rows = [r for r in table if not set(r.replace("|", "").strip()) <= {"-"}]
            cells = [[c.strip() for c in r.strip().strip("|").split("|")] for r in rows]
            head = "".join(f"<th>{inline(c)}</th>" for c in cells[0])
            body = "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in cells[1:])
            parts.append(f"<table><tr>{head}</tr>{body}</table>")
            table.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            parts.append(f"<h{level}>{inline(line[level:].strip())}</h{level}>")
        elif line.startswith("- "):
            parts.append(f"<li>{inline(line[2:])}</li>")
        elif line.strip():
            parts.append(f"<p>{inline(line)}</p>")
    flush()
    return "\n".join(parts)


def html_page(report: dict[str, Any], text: str, run_dir: Path) -> str:
    body = _md_to_html(text, run_dir / "assets")
    videos = []
    compare_dir = run_dir / "compare"
    for name in report["comparison"]:
        for video in sorted((compare_dir / name / "eval" / "videos").glob("*.mp4")):
            videos.append((video.stem, name, video))
    if videos:
        tasks = sorted({t for t, _, _ in videos})
        cells = []
        for task in tasks:
            row = "".join(
                f"<td><video src='{_data_uri(p)}' controls loop muted autoplay playsinline></video>"
                f"<br><small>{html.escape(LABELS.get(n, n))}</small></td>" for t, n, p in videos if t == task)
            cells.append(f"<tr><th>{html.escape(task)}</th>{row}</tr>")
        body += ("<h2>Rollouts</h2><p>First evaluation episode of each task per policy; DeFI's video shows the "
                 "camera view and, beside it, the future its GFDM imagined at the last replanning step.</p>"
                 f"<table>{''.join(cells)}</table>")
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
             "text-align:left;vertical-align:top}img{max-width:100%;image-rendering:pixelated}"
             "video{width:256px;image-rendering:pixelated}code{background:#f4f4f4}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>DeFI demo report</title><style>{style}</style>"
            f"</head><body>{body}</body></html>")


def write_report(run_dir: Path) -> dict[str, Path]:
    import shutil

    run_dir = Path(run_dir)
    assets = run_dir / "assets"
    assets.mkdir(parents=True, exist_ok=True)
    report = collect(run_dir)
    learning_curves(run_dir, assets / "learning_curves.png")
    success_chart(report["comparison"], assets / "success.png")
    gif = _latest(run_dir / "gfdm" / "gifs", "step_*.gif")
    if gif is not None:
        shutil.copyfile(gif, assets / "gfdm_predictions.gif")
    text = markdown(report)
    paths = {"json": run_dir / "report.json", "md": run_dir / "report.md", "html": run_dir / "report.html"}
    paths["json"].write_text(json.dumps(report, indent=2, default=str) + "\n")
    paths["md"].write_text(text)
    paths["html"].write_text(html_page(report, text, run_dir))
    return paths


def ablation_markdown(result: dict[str, Any]) -> str:
    out = [f"Each row finetuned for {result['finetune_steps']} steps on the demo's demonstrations and evaluated on "
           f"{result['episodes_per_task']} episodes per task ({', '.join(result['tasks'])}); success % with Wilson "
           "95% intervals. The paper's column is its CALVIN ABC-D average task length, for the ordering only.", ""]
    for table, t in result["tables"].items():
        out += [f"### {t['title']}", ""]
        tasks = list(next(iter(t["rows"].values()))["per_task"])
        head = "| row | all tasks | " + " | ".join(x.removesuffix("-v3") for x in tasks) + \
            (f" | paper ({t['paper_metric']}) |" if t["paper_metric"] else " |")
        out += [head, "|---" * (len(tasks) + 2 + bool(t["paper_metric"])) + "|"]
        for name, row in t["rows"].items():
            cells = [pct(row["overall"])] + [pct(row["per_task"][x]) for x in tasks]
            paper = t["paper"].get(name)
            tail = (f" | {paper if paper is not None else '-'} |" if t["paper_metric"] else " |")
            out.append(f"| {t['names'].get(name, name)} | " + " | ".join(cells) + tail)
        out += ["", "Paper's ordering:"] + [f"- {v['text']}" for v in t["verdicts"]] + [""]
    return "\n".join(out)
