"""Draws bench/soak.sh's samples as an SVG: RSS of the runner and the catalogue (MiB) and the
benchmark database's connections over time, with the runner's restarts marked. No plotting
library: a few lines of SVG.

Usage: plot.py SAMPLES OUT.svg TITLE [RESTART_SECONDS...]
"""
import sys

samples_path, out, title, *restarts = sys.argv[1:]
rows = []
for line in open(samples_path):
    parts = line.split()
    if len(parts) != 4:
        continue
    try:
        rows.append([float(p) for p in parts])
    except ValueError:
        continue
restarts = [float(r) for r in restarts]
W, H, M = 900, 250, 60  # panel width, height, margin


def panel(top, series, label, colors):
    t_max = max(r[0] for r in rows) or 1
    v_max = max(max(r[i] for r in rows if r[i] == r[i]) for i, _ in series) * 1.15 or 1
    x = lambda t: M + (W - 2 * M) * t / t_max
    y = lambda v: top + H - M / 2 - (H - M) * v / v_max
    svg = [f'<text x="{M}" y="{top + 18}" font-size="14">{label}</text>']
    svg.append(f'<line x1="{M}" y1="{y(0)}" x2="{W - M}" y2="{y(0)}" stroke="#888"/>')
    svg.append(f'<line x1="{M}" y1="{y(0)}" x2="{M}" y2="{y(v_max)}" stroke="#888"/>')
    for k in range(5):
        v = v_max * k / 4
        svg.append(f'<text x="{M - 6}" y="{y(v) + 4}" font-size="11" text-anchor="end">{v:.0f}</text>')
    for k in range(7):
        t = t_max * k / 6
        svg.append(f'<text x="{x(t)}" y="{y(0) + 15}" font-size="11" text-anchor="middle">{t / 60:.0f} min</text>')
    for r in restarts:
        svg.append(f'<line x1="{x(r)}" y1="{y(0)}" x2="{x(r)}" y2="{y(v_max)}" stroke="#c00" stroke-dasharray="4 3"/>')
        svg.append(f'<text x="{x(r) + 4}" y="{y(v_max) + 12}" font-size="11" fill="#c00">runner kill -9</text>')
    for (i, name), color in zip(series, colors):
        points = " ".join(f"{x(r[0]):.1f},{y(r[i]):.1f}" for r in rows if r[i] == r[i])
        svg.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{points}"/>')
    for k, ((i, name), color) in enumerate(zip(series, colors)):
        svg.append(f'<text x="{W - M - 220 + 120 * k}" y="{top + 18}" font-size="12" fill="{color}">{name}</text>')
    return svg


body = [f'<text x="{M}" y="24" font-size="16" font-weight="bold">{title}</text>']
body += panel(30, [(1, "runner RSS"), (2, "catalogue RSS")], "memory (MiB)", ["#1f77b4", "#2ca02c"])
body += panel(30 + H, [(3, "connections")], "database connections", ["#9467bd"])
svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{2 * H + 40}" '
       f'font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>'
       + "".join(body) + "</svg>\n")
open(out, "w").write(svg)
