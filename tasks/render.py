"""Drawing for the generated task: document pages with PIL, charts with matplotlib, mild scan noise.

Only the TrueType fonts that matplotlib ships are used (never system fonts), so a page renders the same on
every machine with the same Pillow/FreeType/matplotlib versions. Everything random comes in as an explicit
`numpy.random.Generator`; nothing here touches a global RNG.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONT_DIR = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
# family -> (regular file, bold file, matplotlib family name)
FAMILIES: dict[str, tuple[str, str, str]] = {
    "sans": ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVu Sans"),
    "serif": ("DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVu Serif"),
    "mono": ("DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVu Sans Mono"),
}
INK = (24, 24, 28)
GREY = (110, 110, 118)
PAPER = (252, 251, 247)
Color = tuple[int, int, int]


@cache
def font(family: str, size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(FONT_DIR / FAMILIES[family][1 if bold else 0]), size)


@dataclass(frozen=True)
class Style:
    """A page's typography: one family for body text, one for headings, and sizes."""

    body: str
    heading: str
    body_size: int
    title_size: int
    accent: Color


class Page:
    """A blank page with a moving cursor: each `add_*` draws below the previous block."""

    def __init__(self, size: tuple[int, int], style: Style, margin: int = 64) -> None:
        self.img = Image.new("RGB", size, PAPER)
        self.draw = ImageDraw.Draw(self.img)
        self.style, self.margin = style, margin
        self.width = size[0] - 2 * margin
        self.y = margin

    def _font(self, size: int | None = None, bold: bool = False, family: str | None = None):
        return font(family or self.style.body, size or self.style.body_size, bold)

    def header(self, left: str, right: str) -> None:
        f = self._font(max(12, self.style.body_size - 4), family=self.style.heading)
        self.draw.text((self.margin, self.y), left, font=f, fill=GREY)
        self.draw.text((self.margin + self.width, self.y), right, font=f, fill=GREY, anchor="ra")
        self.y += f.size + 8
        self.rule(width=2)
        self.y += 18

    def footer(self, text: str) -> None:
        f = self._font(max(12, self.style.body_size - 5))
        y = self.img.height - self.margin // 2 - f.size
        self.draw.line((self.margin, y - 10, self.margin + self.width, y - 10), fill=GREY, width=1)
        self.draw.text((self.margin + self.width // 2, y), text, font=f, fill=GREY, anchor="ma")

    def rule(self, width: int = 1, color: Color = GREY) -> None:
        self.draw.line((self.margin, self.y, self.margin + self.width, self.y), fill=color, width=width)

    def title(self, text: str, size: int | None = None) -> None:
        self.paragraph(text, size=size or self.style.title_size, bold=True,
                       family=self.style.heading, color=self.style.accent, after=14)

    def paragraph(self, text: str, size: int | None = None, bold: bool = False, family: str | None = None,
                  color: Color = INK, indent: int = 0, after: int | None = None) -> None:
        f = self._font(size, bold, family)
        line_h = int(f.size * 1.42)
        for line in wrap(text, f, self.width - indent):
            self.draw.text((self.margin + indent, self.y), line, font=f, fill=color)
            self.y += line_h
        self.y += f.size if after is None else after

    def table(self, header: Sequence[str], rows: Sequence[Sequence[str]], size: int | None = None) -> None:
        """A ruled table: header cells wrap onto several lines; row labels left, numbers right-aligned."""
        size, pad = size or self.style.body_size, 12
        while True:  # still too wide after wrapping: a smaller font, never text spilling out of its cell
            f, fb = self._font(size), self._font(size, bold=True)
            head = [wrap(h, fb, max(110, self.width / len(header) - 2 * pad)) for h in header]
            widths = [max([fb.getlength(line) for line in head[c]] + [f.getlength(r[c]) for r in rows])
                      + 2 * pad for c in range(len(header))]
            if sum(widths) <= self.width or size <= 11:
                break
            size -= 1
        line_h, row_h = int(f.size * 1.3), int(f.size * 2.0)
        head_h = row_h + line_h * (max(map(len, head)) - 1)
        x0, top, right = self.margin, self.y, self.margin + sum(widths)
        self.draw.rectangle((x0, top, right, top + head_h), fill=tint(self.style.accent))
        x = x0
        for c, (lines, w) in enumerate(zip(head, widths, strict=True)):
            for k, line in enumerate(lines):  # bottom-aligned, like a printed table's header
                y = top + head_h - row_h // 2 - line_h * (len(lines) - 1 - k)
                at, anchor = ((x + pad, "lm") if c == 0 else (x + w - pad, "rm"))
                self.draw.text((at, y), line, font=fb, fill=INK, anchor=anchor)
            x += w
        self.y += head_h
        self.draw.line((x0, self.y, right, self.y), fill=INK, width=2)
        for row in rows:
            x = x0
            for c, (cell, w) in enumerate(zip(row, widths, strict=True)):
                at, anchor = ((x + pad, "lm") if c == 0 else (x + w - pad, "rm"))
                self.draw.text((at, self.y + row_h // 2), cell, font=f, fill=INK, anchor=anchor)
                x += w
            self.y += row_h
            self.draw.line((x0, self.y, right, self.y), fill=GREY, width=1)
        # Book-style rules, no enclosing box: Tesseract often drops a boxed, shaded table as an image region.
        self.draw.line((x0, top, right, top), fill=INK, width=2)
        self.draw.line((x0, self.y, right, self.y), fill=INK, width=2)
        self.y += f.size + 6

    def fields(self, pairs: Sequence[tuple[str, str]], size: int | None = None) -> None:
        """Form fields: a bold label, then the value written in a ruled box."""
        f, fb = self._font(size), self._font(size, bold=True)
        label_w = max(self.draw.textlength(k + ":", font=fb) for k, _ in pairs) + 18
        box_h = int(f.size * 2.1)
        for label, value in pairs:
            self.draw.text((self.margin, self.y + box_h // 2), label + ":", font=fb, fill=INK, anchor="lm")
            box = (self.margin + label_w, self.y, self.margin + self.width, self.y + box_h)
            self.draw.rectangle(box, outline=GREY, width=1)
            self.draw.text((box[0] + 10, self.y + box_h // 2), value, font=f, fill=INK, anchor="lm")
            self.y += box_h + 10
        self.y += 8

    def checkboxes(self, options: Sequence[str], checked: int) -> None:
        f = self._font()
        x, s = self.margin, f.size
        for i, opt in enumerate(options):
            self.draw.rectangle((x, self.y, x + s, self.y + s), outline=INK, width=2)
            if i == checked:
                self.draw.line((x + 3, self.y + s // 2, x + s // 2, self.y + s - 3), fill=INK, width=3)
                self.draw.line((x + s // 2, self.y + s - 3, x + s - 2, self.y + 2), fill=INK, width=3)
            self.draw.text((x + s + 8, self.y + s // 2), opt, font=f, fill=INK, anchor="lm")
            x += s + 8 + int(self.draw.textlength(opt, font=f)) + 36
        self.y += s + 24

    def signature(self, name: str, date: str) -> None:
        f = self._font()
        half = self.width // 2 - 20
        for i, (label, value) in enumerate((("Signature", name), ("Date", date))):
            x = self.margin + i * (half + 40)
            self.draw.text((x + 6, self.y), value, font=font("serif", f.size + 2), fill=(30, 40, 110))
            self.draw.line((x, self.y + f.size + 10, x + half, self.y + f.size + 10), fill=INK, width=1)
            self.draw.text((x, self.y + f.size + 16), label, font=self._font(f.size - 3), fill=GREY)
        self.y += 2 * f.size + 40

    def image(self, im: Image.Image) -> None:
        x = self.margin + (self.width - im.width) // 2
        self.img.paste(im, (x, self.y))
        self.y += im.height + 16


def wrap(text: str, f: ImageFont.FreeTypeFont, width: float) -> list[str]:
    """Greedy word wrap by rendered width (PIL has none)."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if line and f.getlength(trial) > width:
            lines.append(line)
            line = word
        else:
            line = trial
    return [*lines, line] if line else lines


def tint(c: Color, amount: float = 0.85) -> Color:
    return tuple(int(v + (255 - v) * amount) for v in c)  # type: ignore[return-value]


def chart(kind: str, years: Sequence[int], values: Sequence[float], labels: Sequence[str], title: str,
          ylabel: str, family: str, color: Color, size_px: tuple[int, int]) -> Image.Image:
    """A bar or line chart with every value printed on it (so OCR and readers can recover the numbers)."""
    rc = {"font.family": FAMILIES[family][2], "svg.hashsalt": "generated-task", "axes.titleweight": "bold",
          "font.size": 12}
    dpi = 100
    with matplotlib.rc_context(rc):
        fig = Figure(figsize=(size_px[0] / dpi, size_px[1] / dpi), dpi=dpi, facecolor="white")
        ax = fig.add_subplot()
        rgb = tuple(v / 255 for v in color)
        x = [str(y) for y in years]
        label_size = 12 if len(years) <= 7 else 9  # long series: smaller labels that do not collide
        if kind == "bar":
            bars = ax.bar(x, values, color=rgb, width=0.6)
            ax.bar_label(bars, labels=list(labels), padding=3, fontsize=label_size)
        else:
            ax.plot(x, values, color=rgb, marker="o", linewidth=2.2)
            for xi, v, s in zip(x, values, labels, strict=True):
                ax.annotate(s, (xi, v), textcoords="offset points", xytext=(0, 9), ha="center",
                            fontsize=label_size)
        lo, hi = min(values), max(values)
        pad = 0.25 * (hi - lo) + 0.02 * abs(hi) + 1e-6  # room for the value labels
        ax.set_ylim(0 if kind == "bar" else lo - pad, hi * 1.12 if kind == "bar" else hi + pad)
        ax.set_title(title, fontsize=15, pad=12)
        ax.set_xlabel("Year", fontsize=13)
        ax.set_ylabel(ylabel, fontsize=13)
        ax.spines[["top", "right"]].set_visible(False)
        if len(years) > 8:
            ax.tick_params(axis="x", labelrotation=45)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        return Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3].copy())


def scan(img: Image.Image, rng: np.random.Generator, strength: float) -> Image.Image:
    """Mild scanner look: a slight skew (< 1 degree), a little blur, grain. strength 0 leaves the page."""
    if strength <= 0:
        return img
    angle = float(rng.uniform(-0.8, 0.8) * min(1.0, strength))
    img = img.rotate(angle, resample=Image.Resampling.BICUBIC, fillcolor=PAPER)
    img = img.filter(ImageFilter.GaussianBlur(0.35 + 0.4 * min(1.0, strength)))
    # Sensor grain scaled by ink darkness (one grey value for all channels): the paper stays flat, as after a
    # scanner's background removal, which keeps PNGs small (grain on white paper costs ~1 MB a page).
    arr = np.asarray(img, dtype=np.float32)
    ink = np.clip(0.92 - arr.mean(axis=2, keepdims=True) / 255.0, 0.0, None) / 0.92
    arr += rng.normal(0.0, 40.0 * strength, size=ink.shape).astype(np.float32) * ink
    # A little dust: sparse grey specks.
    n = int(300 * strength)
    ys, xs = rng.integers(0, img.height, n), rng.integers(0, img.width, n)
    arr[ys, xs] = rng.uniform(90, 200, (n, 1))
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))


def png_bytes(img: Image.Image) -> bytes:
    """PNG bytes with fixed settings and no metadata chunks: identical pixels give identical bytes."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()
