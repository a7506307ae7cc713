#!/usr/bin/env python3
"""Bits per LLM weight against mean KLD, from the accuracy table (tools/accuracy_table.sh's output, or
the README section that holds it), next to llama.cpp's figures on the same six reference cases.

    python3 tools/bits_vs_kld.py TABLE.md chart.svg [chart.png]

Writes an SVG (no plotting library needed); with a .png name too, renders it with headless Chromium
(tools/render_report.sh). Each vlq row is a point at its "bits/LLM-Linear weight" and "mean KLD".
"""
import math
import os
import subprocess
import sys
import tempfile

# llama.cpp on the tiny model's six reference cases (README, Accuracy): LLM Linears only, the rest float.
LLAMA_CPP = [("llama.cpp Q8_0", 8.5, 2.7e-5), ("llama.cpp Q4_0 + imatrix", 4.5, 3.0e-3),
             ("llama.cpp Q4_K_M + imatrix", 4.79, 3.7e-3)]


def rows(path):
    """(name, bits, kld) for every quantized row of the first markdown table with those columns."""
    out, header = [], None
    for line in open(path, encoding="utf-8"):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3:
            continue
        if header is None:
            if "mean KLD" in cells:
                header = cells
            continue
        if set(cells[0]) <= set("-: "):
            continue
        try:
            kld = float(cells[header.index("mean KLD")])
            bits = float(next(cells[i] for i, h in enumerate(header) if h.startswith("bits") and "LLM" in h))
        except (ValueError, StopIteration):
            break
        if bits < 16:
            out.append((cells[0], bits, kld))
    return out


def svg(points, width=900, height=560):
    left, right, top, bottom = 90, 250, 40, 70
    xs = [b for _, b, _, _ in points]
    lo_x, hi_x = min(2.5, min(xs)), max(9.0, max(xs))
    ys = [math.log10(k) for _, _, k, _ in points]
    lo_y, hi_y = math.floor(min(ys)), math.ceil(max(ys))

    def px(b):
        return left + (b - lo_x) / (hi_x - lo_x) * (width - left - right)

    def py(k):
        return top + (hi_y - math.log10(k)) / (hi_y - lo_y) * (height - top - bottom)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             'font-family="DejaVu Sans, sans-serif" font-size="12">',
             f'<rect width="{width}" height="{height}" fill="white"/>']
    for e in range(lo_y, hi_y + 1):
        y = py(10 ** e)
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end">1e{e}</text>')
    b = math.ceil(lo_x)
    while b <= hi_x:
        x = px(b)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{height - bottom}" stroke="#eee"/>')
        parts.append(f'<text x="{x:.1f}" y="{height - bottom + 18}" text-anchor="middle">{b}</text>')
        b += 1
    parts.append(f'<text x="{(left + width - right) / 2:.0f}" y="{height - 25}" text-anchor="middle">'
                 'bits per LLM Linear weight</text>')
    parts.append(f'<text transform="translate(25,{(top + height - bottom) / 2:.0f}) rotate(-90)"\n'
                 'text-anchor="middle">mean KL divergence vs fp32 (six reference cases, log scale)</text>')
    parts.append(f'<text x="{left}" y="24" font-size="15">Tiny Yi-VL: size against drift '
                 '(lower left is better)</text>')
    colours = {"vlq": "#1f77b4", "llama.cpp": "#d62728", "allocated": "#2ca02c"}
    for name, bits, kld, kind in points:
        x, y = px(bits), py(kld)
        colour = colours[kind]
        if kind == "llama.cpp":
            parts.append(f'<rect x="{x - 5:.1f}" y="{y - 5:.1f}" width="10" height="10" fill="{colour}"/>')
        else:
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{colour}"/>')
        # rtn, imatrix and awq rows crowd each other at the same size: their dots only.
        if kind == "allocated":
            # Left of the dot, without the bracket: the presets' labels crowd the right at 4-4.5 bits.
            label = name.split(" (")[0]
            parts.append(f'<text x="{x - 8:.1f}" y="{y + 4:.1f}" fill="{colour}" text-anchor="end">{label}</text>')
        elif kind != "vlq" or "gptq" in name:
            parts.append(f'<text x="{x + 8:.1f}" y="{y + 4:.1f}" fill="{colour}">{name}</text>')
    legend = [("vlq presets (gptq rows named)", "vlq"), ("vlq, precision chosen per Linear", "allocated"),
              ("llama.cpp (LLM only, same cases)", "llama.cpp")]
    for i, (label, kind) in enumerate(legend):
        y = top + 20 * i
        if kind:
            parts.append(f'<circle cx="{width - right + 20}" cy="{y}" r="5" fill="{colours[kind]}"/>')
        parts.append(f'<text x="{width - right + 30}" y="{y + 4}">{label}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    table, out_svg = sys.argv[1], sys.argv[2]
    points = [(n, b, k, "allocated" if n.startswith(("allocated", "--")) else "vlq") for n, b, k in rows(table)]
    if not points:
        sys.exit(f"bits_vs_kld: {table}: no table with 'mean KLD' and 'bits ... LLM' columns")
    points += [(n, b, k, "llama.cpp") for n, b, k in LLAMA_CPP]
    with open(out_svg, "w", encoding="utf-8") as f:
        f.write(svg(points))
    print(f"wrote {out_svg}")
    if len(sys.argv) == 4:
        with tempfile.TemporaryDirectory() as d:
            page = os.path.join(d, "chart.html")
            with open(page, "w", encoding="utf-8") as f:
                f.write('<html><body style="margin:0">' + svg(points) + "</body></html>")
            here = os.path.dirname(os.path.abspath(__file__))
            subprocess.run([os.path.join(here, "render_report.sh"), page, sys.argv[3], "900x560"], check=True)


if __name__ == "__main__":
    main()
