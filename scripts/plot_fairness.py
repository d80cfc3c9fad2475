#!/usr/bin/env python3
"""Draws the time and energy shares of etf-sim reports as grouped bars, one group per
report, in a dependency-free SVG.

    scripts/plot_fairness.py OUT.svg LABEL=REPORT.json [LABEL=REPORT.json ...]
"""
import json
import sys

COLOURS = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2"]


def main():
    if len(sys.argv) < 3 or any("=" not in a for a in sys.argv[2:]):
        print(__doc__, file=sys.stderr)
        return 2
    runs = []
    for arg in sys.argv[2:]:
        label, path = arg.split("=", 1)
        with open(path) as f:
            runs.append((label, json.load(f)))
    names = [t["name"] for t in runs[0][1]["tenants"]]
    bar, gap, group_gap, top, height, left = 18, 4, 40, 40, 300, 50
    group_w = 2 * (len(names) * (bar + gap)) + group_gap
    width = left + len(runs) * group_w + 20
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{top + height + 90}" '
           'font-family="sans-serif" font-size="11">',
           f'<text x="{left}" y="18" font-size="13">Share of device time (solid) and of '
           'measured energy (hatched) per tenant</text>',
           '<defs><pattern id="h" width="4" height="4" patternUnits="userSpaceOnUse" '
           'patternTransform="rotate(45)"><rect width="2" height="4" fill="white" '
           'opacity="0.6"/></pattern></defs>']
    for frac in (0, 0.25, 0.5, 0.75, 1.0):
        y = top + height * (1 - frac)
        svg.append(f'<line x1="{left}" x2="{width - 10}" y1="{y}" y2="{y}" stroke="#ddd"/>')
        svg.append(f'<text x="{left - 6}" y="{y + 4}" text-anchor="end">{int(frac * 100)}%</text>')
    for g, (label, report) in enumerate(runs):
        x0 = left + 10 + g * group_w
        for kind, key in enumerate(("time_share", "energy_share")):
            for i, t in enumerate(report["tenants"]):
                x = x0 + (kind * len(names) + i) * (bar + gap)
                h = height * t[key]
                y = top + height - h
                svg.append(f'<rect x="{x}" y="{y:.1f}" width="{bar}" height="{h:.1f}" '
                           f'fill="{COLOURS[i % len(COLOURS)]}"/>')
                if kind:
                    svg.append(f'<rect x="{x}" y="{y:.1f}" width="{bar}" height="{h:.1f}" fill="url(#h)"/>')
        svg.append(f'<text x="{x0 + len(names) * (bar + gap) - gap / 2}" y="{top + height + 16}" '
                   f'text-anchor="middle">{label}</text>')
    for i, name in enumerate(names):
        y = top + height + 40 + 14 * (i // 3)
        x = left + 200 * (i % 3)
        svg.append(f'<rect x="{x}" y="{y - 9}" width="10" height="10" fill="{COLOURS[i % len(COLOURS)]}"/>')
        svg.append(f'<text x="{x + 14}" y="{y}">{name}</text>')
    svg.append("</svg>")
    with open(sys.argv[1], "w") as f:
        f.write("\n".join(svg) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
