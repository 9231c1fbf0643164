"""The HTML reports of benchmark runs: one static file per run (``report.html``) or comparison (``compare.html``),
every image linked by a relative path (the run's own images; reference thumbnails copied into ``report_files/``),
so a run folder can be moved or served as it is."""

from __future__ import annotations

import html
from pathlib import Path

from PIL import Image

from ..errors import UnofluxError
from ..images import atomic_write, load_image
from .dreambench import PAPER_NUMBERS, Benchmark, relative_path
from .scores import METRIC_LABELS, ImageScore, format_interval

THUMBNAIL = 256  # long side of the copied reference pictures, px
BEST_WORST = 6

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1280px; color: #1d1d1f; padding: 0 16px; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ddd; } h3 { font-size: 15px; }
table { border-collapse: collapse; margin: 8px 0; } td, th { padding: 4px 10px; border-bottom: 1px solid #eee; text-align: left; }
th { background: #f6f6f8; } td.num { font-variant-numeric: tabular-nums; white-space: nowrap; }
.paper td { color: #666; font-style: italic; }
.meta { color: #555; } .meta code { background: #f3f3f5; padding: 1px 4px; border-radius: 3px; }
.grid { display: flex; flex-wrap: wrap; gap: 8px; align-items: flex-start; }
figure { margin: 0; width: 168px; font-size: 12px; } figure img { width: 168px; height: 168px; object-fit: contain; background: #f3f3f5; }
figure.ref img { outline: 3px solid #3478f6; } figcaption { color: #333; word-wrap: break-word; }
.pair { display: flex; gap: 4px; border: 1px solid #eee; padding: 4px; }
.bar { display: inline-block; height: 8px; background: #3478f6; vertical-align: middle; margin-left: 6px; }
.bad { color: #b00020; } .better { color: #137333; font-weight: 600; } .worse { color: #b00020; }
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _src(target: str | Path, page_dir: Path) -> str:
    return _e(relative_path(target, page_dir))


def _score_line(s: ImageScore, metrics: list[str]) -> str:
    if s.error:
        return f'<span class="bad">{_e(s.error)}</span>'
    short = {"dino": "D", "clip_i": "CI", "clip_t": "CT", "dino_masked": "Dm"}
    return " · ".join(f"{short[m]} {getattr(s, m):.3f}" for m in metrics if getattr(s, m) is not None)


def _figure(src: str, caption: str, cls: str = "", title: str = "") -> str:
    return (
        f'<figure class="{cls}"><img loading="lazy" src="{src}" alt="{_e(title)}" title="{_e(title)}">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def reference_thumbnails(benchmark: Benchmark, run_dir: Path) -> dict[str, str]:
    """Each conditioning image copied as a small JPEG into ``report_files/`` -> {image path: path for the page}."""
    folder = run_dir / "report_files"
    table = {}
    for item in benchmark.items:
        for rel in item.references:
            if rel in table:
                continue
            target = folder / (rel.replace("/", "__").rsplit(".", 1)[0] + ".jpg")
            try:
                picture = load_image(Path(benchmark.root) / rel, "reference image")
            except UnofluxError:  # an unreadable reference is listed in the report, not a dead run
                continue
            picture.thumbnail((THUMBNAIL, THUMBNAIL), Image.Resampling.LANCZOS)
            atomic_write(target, lambda tmp, p=picture: p.save(tmp, format="JPEG", quality=88))
            table[rel] = _src(target, run_dir)
    return table


def _summary_table(summary: dict, kind: str, label: str = "this run") -> str:
    metrics = summary["metrics"]
    head = "".join(f"<th>{METRIC_LABELS[m]}</th>" for m in metrics)
    ours = "".join(f'<td class="num">{format_interval(summary["overall"][m])}</td>' for m in metrics)
    rows = [f"<tr><td>{_e(label)}</td>{ours}</tr>"]
    paper = PAPER_NUMBERS.get(kind)
    if paper:
        cells = "".join(f'<td class="num">{paper[m]:.3f}</td>' if m in paper else "<td>-</td>" for m in metrics)
        rows.append(f'<tr class="paper"><td>{_e(paper["method"])}</td>{cells}</tr>')
    return f"<table><tr><th></th>{head}</tr>{''.join(rows)}</table>"


def _breakdown_table(title: str, blocks: dict, metrics: list[str]) -> str:
    head = "".join(f"<th>{METRIC_LABELS[m]} (95% CI)</th>" for m in metrics)
    rows = []
    for key, block in blocks.items():
        cells = []
        for m in metrics:
            stat = block[m]
            width = 0 if stat["mean"] is None else max(0.0, min(1.0, stat["mean"])) * 80
            cells.append(
                f'<td class="num">{format_interval(stat)}<span class="bar" style="width:{width:.0f}px"></span></td>'
            )
        n = block[metrics[0]]["n"] if metrics else 0
        rows.append(f"<tr><td>{_e(key)}</td><td class='num'>{n}</td>{''.join(cells)}</tr>")
    return f"<h2>{_e(title)}</h2><table><tr><th></th><th>images</th>{head}</tr>{''.join(rows)}</table>"


def _primary(metrics: list[str]) -> str | None:
    return next((m for m in ("dino", "clip_i", "clip_t") if m in metrics), None)


def write_run_report(run_dir: str | Path, summary: dict, scores: list[ImageScore], benchmark: Benchmark) -> Path:
    """``run_dir/report.html``: summary beside the paper, breakdowns, best and worst, a grid per subject."""
    run_dir = Path(run_dir)
    metrics = summary["scores"]["metrics"]
    thumbs = reference_thumbnails(benchmark, run_dir)
    parts = [f"<h1>DreamBench {_e(benchmark.kind)}-subject evaluation</h1>", _meta(summary)]
    parts.append("<h2>Summary</h2>" + _summary_table(summary["scores"], benchmark.kind))
    parts.append(
        "<p class='meta'>Means over generated images; 95% percentile-bootstrap intervals over benchmark items. "
        "CLIP-T is the plain cosine (the paper's scale). The paper's backbones are not named by UNO; ours are "
        "listed above, so numbers are comparable only with the same backbones.</p>"
    )
    parts.append(_problems(summary))
    parts.append(_breakdown_table("Per subject", summary["scores"]["per_subject"], metrics))
    title = "Per prompt" + (" (the first subject's)" if benchmark.kind == "multi" else "")
    parts.append(_breakdown_table(title, summary["scores"]["per_prompt"], metrics))
    primary = _primary(metrics)
    ranked = sorted((s for s in scores if s.error is None and primary), key=lambda s: getattr(s, primary))
    shown = min(BEST_WORST, len(ranked) // 2)  # best and worst never show the same image
    if shown:
        for title, chosen in (("Best", ranked[::-1][:shown]), ("Worst", ranked[:shown])):
            figures = [
                _figure(
                    _src(run_dir / s.path, run_dir), f"{_e(s.item_id)}: {_e(s.prompt)}<br>{_score_line(s, metrics)}"
                )
                for s in chosen
            ]
            parts.append(
                f"<h2>{title} {len(chosen)} by {METRIC_LABELS[primary]}</h2><div class='grid'>{''.join(figures)}</div>"
            )
    parts.append("<h2>Every subject</h2><p class='meta'>Blue outline: the reference the model was given.</p>")
    for group, members in _groups_by_subjects(scores).items():
        item = benchmark.items[members[0].item]
        refs = [
            _figure(thumbs[r], f"reference {k}: {_e(r)}", "ref", r) if r in thumbs else f"<p class='bad'>{_e(r)}</p>"
            for k, r in enumerate(item.references, start=1)
        ]
        gens = [
            _figure(
                _src(run_dir / s.path, run_dir),
                f"{s.prompt_index}.{s.image}: {_e(s.prompt)}<br>{_score_line(s, metrics)}",
                title=s.prompt,
            )
            for s in members
        ]
        parts.append(f"<h3 id='{_e(group)}'>{_e(group)}</h3><div class='grid'>{''.join(refs + gens)}</div>")
    return _write_page(run_dir / "report.html", f"DreamBench {benchmark.kind}: report", parts)


def _groups_by_subjects(scores: list[ImageScore]) -> dict[str, list[ImageScore]]:
    groups: dict[str, list[ImageScore]] = {}
    for s in scores:
        groups.setdefault("+".join(s.subjects), []).append(s)
    return groups


def _meta(summary: dict) -> str:
    backbones = summary.get("backbones") or {}
    names = [f"{k}: <code>{_e(v['folder'])}</code>" for k, v in backbones.items() if isinstance(v, dict)]
    model = summary.get("model") or {}
    settings = summary.get("settings") or {}
    shown = {k: settings[k] for k in ("method", "width", "height", "steps", "guidance", "seed") if k in settings}
    lines = [
        f"{summary['scores']['images']} images ({summary['benchmark']['items']} items x "
        f"{summary['images_per_prompt']} per prompt), {summary['scores']['scored']} scored",
        "model: " + ", ".join(f"{_e(k)} <code>{_e(v)}</code>" for k, v in model.items() if v is not None),
        "settings: " + ", ".join(f"{_e(k)} {_e(v)}" for k, v in shown.items()),
        "backbones: " + ", ".join(names),
        f"unoflux {_e(summary['code']['unoflux'])}"
        + (f", git {_e(summary['code']['git'])}" if summary["code"].get("git") else ""),
    ]
    return "<p class='meta'>" + "<br>".join(lines) + "</p>"


def _problems(summary: dict) -> str:
    failed, unreadable = summary["scores"]["failed"], summary.get("unreadable_real_images", [])
    if not failed and not unreadable:
        return ""
    rows = [f"<li>{_e(f['path'])}: {_e(f['error'])}</li>" for f in failed]
    rows += [f"<li>real image {_e(u['image'])} left out: {_e(u['error'])}</li>" for u in unreadable]
    return (
        f"<h2 class='bad'>Not scored ({len(failed)} images, {len(unreadable)} real images)</h2><ul>{''.join(rows)}</ul>"
    )


def write_compare_report(
    out_dir: str | Path,
    comparison: dict,
    runs: tuple[Path, Path],
    scores: tuple[list[ImageScore], list[ImageScore]],
    names: tuple[str, str],
) -> Path:
    """``out_dir/compare.html``: the paired differences with intervals and p-values, then every shared image of A
    beside B."""
    out_dir = Path(out_dir)
    a_name, b_name = (_e(n) for n in names)
    rows = []
    for metric, m in comparison["metrics"].items():
        significant = m["p_value"] < 0.05
        cls = "" if not significant else ("better" if m["difference"] > 0 else "worse")
        rows.append(
            f"<tr><td>{METRIC_LABELS[metric]}</td><td class='num'>{m['a']:.3f}</td><td class='num'>{m['b']:.3f}</td>"
            f"<td class='num {cls}'>{m['difference']:+.4f} [{m['ci_low']:+.4f}, {m['ci_high']:+.4f}]</td>"
            f"<td class='num'>{m['p_value']:.4f}</td><td class='num'>{m['a_better_items']} / {m['b_better_items']}"
            f" of {m['items']}</td></tr>"
        )
    table = (
        f"<table><tr><th></th><th>A: {a_name}</th><th>B: {b_name}</th><th>A - B (95% CI)</th><th>p (paired)</th>"
        f"<th>items A better / B better</th></tr>{''.join(rows)}</table>"
    )
    parts = [
        f"<h1>A/B: {a_name} vs {b_name}</h1>",
        f"<p class='meta'>A: <code>{_e(runs[0])}</code><br>B: <code>{_e(runs[1])}</code><br>{comparison['pairs']} "
        f"image pairs (same item, same image index); only in A: {comparison['only_a']}, only in B: "
        f"{comparison['only_b']}. Intervals: paired bootstrap over items; p: two-sided sign-flip permutation test "
        "on the items' mean differences.</p>",
        table,
    ]
    index_b = {(s.item_id, s.image): s for s in scores[1]}
    metrics = list(comparison["metrics"])
    for group, members in _groups_by_subjects(scores[0]).items():
        figures = []
        for sa in members:
            sb = index_b.get((sa.item_id, sa.image))
            if sb is None:
                continue
            figures.append(
                "<div class='pair'>"
                + _figure(
                    _src(runs[0] / sa.path, out_dir),
                    f"A {_e(sa.item_id)}.{sa.image}<br>{_score_line(sa, metrics)}",
                    title=sa.prompt,
                )
                + _figure(_src(runs[1] / sb.path, out_dir), f"B<br>{_score_line(sb, metrics)}", title=sb.prompt)
                + "</div>"
            )
        if figures:
            parts.append(f"<h3>{_e(group)}</h3><div class='grid'>{''.join(figures)}</div>")
    return _write_page(out_dir / "compare.html", f"A/B: {names[0]} vs {names[1]}", parts)


def _write_page(path: Path, title: str, parts: list[str]) -> Path:
    page = (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'><style>{STYLE}</style></head>"
        f"<body>{''.join(parts)}</body></html>\n"
    )
    return atomic_write(path, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
