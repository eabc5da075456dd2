"""Pictures: NCA frames in a fixed palette, band panels and animations, the probe's
decoded frames, and loss curves from metrics.jsonl.

Every NCA cell is drawn with one fixed colour per state (`palette`), scaled up by whole
pixels, so a picture shows exactly the states the model is trained on. Frames are drawn
with numpy and Pillow only; loss curves with matplotlib (imported when first used).
"""
from __future__ import annotations

import colorsys
import dataclasses
import functools
import os
from typing import Sequence

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

from ncalm import errors
from ncalm import files
from ncalm import metrics

Band = tuple[float, float] | None  # None: unfiltered

# Paul Tol's "muted" scheme (colour-blind safe, print friendly) with its pale grey.
BASE_PALETTE = np.array([
    (0x33, 0x22, 0x88),  # 0 indigo
    (0x88, 0xCC, 0xEE),  # 1 cyan
    (0x44, 0xAA, 0x99),  # 2 teal
    (0x11, 0x77, 0x33),  # 3 green
    (0x99, 0x99, 0x33),  # 4 olive
    (0xDD, 0xCC, 0x77),  # 5 sand
    (0xCC, 0x66, 0x77),  # 6 rose
    (0x88, 0x22, 0x55),  # 7 wine
    (0xAA, 0x44, 0x99),  # 8 purple
    (0xDD, 0xDD, 0xDD),  # 9 pale grey
], np.uint8)
BACKGROUND = (255, 255, 255)
SEPARATOR = (176, 176, 176)
TEXT = (0, 0, 0)


def palette(num_states: int) -> np.ndarray:
  """uint8 [num_states, 3]: the 10 base colours, then distinct generated ones.

  Colours past the tenth walk the hue circle by the golden ratio at a few
  saturation/value levels, skipping any colour already taken.
  """
  if num_states < 1:
    raise ValueError(f'num_states={num_states} must be >= 1.')
  colours = [tuple(int(c) for c in rgb) for rgb in BASE_PALETTE[:num_states]]
  taken = set(colours)
  i = 0
  while len(colours) < num_states:
    hue = (i * 0.6180339887) % 1.0
    saturation = (0.45, 0.75, 0.6)[i % 3]
    value = (0.85, 0.6, 0.95, 0.45)[(i // 3) % 4]
    rgb = tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue, saturation, value))
    if rgb not in taken and rgb != BACKGROUND:
      colours.append(rgb)
      taken.add(rgb)
    i += 1
  return np.array(colours, np.uint8)


def frames_to_rgb(frames_THW: np.ndarray, num_states: int, scale: int = 1) -> np.ndarray:
  """uint8 [..., H·scale, W·scale, 3]: each state its palette colour, nearest-neighbour."""
  frames = np.asarray(frames_THW)
  if scale < 1:
    raise errors.UserError(f'scale={scale} must be a positive integer.')
  if frames.size and (frames.min() < 0 or frames.max() >= num_states):
    raise ValueError(f'states range over [{frames.min()}, {frames.max()}], '
                     f'outside 0..{num_states - 1} (num_states={num_states}).')
  rgb = palette(num_states)[frames]
  return rgb.repeat(scale, axis=-3).repeat(scale, axis=-2)


@dataclasses.dataclass(frozen=True)
class Layout:
  """Pixel geometry of a band × rule grid whose cells hold `frames_per_cell` frames."""
  rows: int                 # bands
  columns: int              # rules per band
  frame_size: int           # pixels per side of one frame (grid · scale)
  frames_per_cell: int      # 1 for the GIF, the filmstrip length for the PNG
  margin: int = 6
  header_height: int = 16   # title line
  label_width: int = 64     # band label column
  caption_height: int = 15  # rule score line above each cell
  min_cell_width: int = 36  # room for the caption when frames are small
  frame_gap: int = 2        # between frames of a filmstrip
  column_gap: int = 9       # between rules (a separator line in the middle)
  row_gap: int = 9          # between bands (a separator line in the middle)

  @property
  def strip_width(self) -> int:
    """Pixels of the frames of one cell with the gaps between them."""
    return self.frames_per_cell * self.frame_size + (self.frames_per_cell - 1) * self.frame_gap

  @property
  def cell_width(self) -> int:
    return max(self.strip_width, self.min_cell_width)

  @property
  def row_height(self) -> int:
    return self.caption_height + self.frame_size

  @property
  def size(self) -> tuple[int, int]:
    """(width, height) of the whole image."""
    width = (2 * self.margin + self.label_width + self.columns * self.cell_width
             + (self.columns - 1) * self.column_gap)
    height = (2 * self.margin + self.header_height + self.rows * self.row_height
              + (self.rows - 1) * self.row_gap)
    return width, height

  def row_top(self, row: int) -> int:
    return self.margin + self.header_height + row * (self.row_height + self.row_gap)

  def cell_left(self, column: int) -> int:
    return self.margin + self.label_width + column * (self.cell_width + self.column_gap)

  def frame_origin(self, row: int, column: int, frame: int = 0) -> tuple[int, int]:
    """(x, y) of the top-left pixel of one frame of one cell."""
    x = self.cell_left(column) + frame * (self.frame_size + self.frame_gap)
    return x, self.row_top(row) + self.caption_height


@functools.cache
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
  try:
    return ImageFont.load_default(size=12)
  except TypeError:  # Pillow without FreeType: the fixed bitmap font
    return ImageFont.load_default()


def _text(text: str) -> str:
  """The text as the default fonts can draw it (plain ASCII)."""
  return text.encode('ascii', 'replace').decode('ascii')


def band_label(band: Band) -> str:
  """'0.2-0.3' for a band, 'all' for unfiltered rules.

  An ASCII hyphen: Pillow's default font has no en dash glyph.
  """
  return 'all' if band is None else f'{float(band[0])}-{float(band[1])}'


def _draw_grid(cells_BRFHW3: np.ndarray, layout: Layout, labels: Sequence[str],
               captions: Sequence[Sequence[str]] | None, header: str) -> Image.Image:
  """Draws labels, captions, separators and [band, rule, frame] RGB frames."""
  image = Image.new('RGB', layout.size, BACKGROUND)
  draw = ImageDraw.Draw(image)
  font = _font()
  draw.text((layout.margin, layout.margin), _text(header), fill=TEXT, font=font)
  width, _ = layout.size
  for row in range(layout.rows):
    top = layout.row_top(row)
    if row:
      y = top - layout.row_gap // 2 - 1
      draw.line([(layout.margin, y), (width - layout.margin - 1, y)], fill=SEPARATOR)
    label_y = top + layout.caption_height + layout.frame_size // 2 - 6
    draw.text((layout.margin, label_y), _text(labels[row]), fill=TEXT, font=font)
    for column in range(layout.columns):
      if column:
        x = layout.cell_left(column) - layout.column_gap // 2 - 1
        draw.line([(x, top), (x, top + layout.row_height - 1)], fill=SEPARATOR)
      if captions is not None:
        draw.text((layout.cell_left(column), top), _text(captions[row][column]),
                  fill=TEXT, font=font)
      left = layout.cell_left(column)
      y = top + layout.caption_height
      draw.rectangle([(left, y), (left + layout.strip_width - 1, y + layout.frame_size - 1)],
                     fill=SEPARATOR)  # shows as the gaps between filmstrip frames
      for frame in range(layout.frames_per_cell):
        tile = Image.fromarray(cells_BRFHW3[row, column, frame])
        image.paste(tile, layout.frame_origin(row, column, frame))
  return image


def _check_grid(trajectories_BRTHW: np.ndarray, labels: Sequence[str],
                scores_BR: np.ndarray | None) -> np.ndarray:
  trajectories = np.asarray(trajectories_BRTHW)
  if trajectories.ndim != 5:
    raise ValueError(f'trajectories have shape {trajectories.shape}: expected '
                     '[bands, rules, frames, H, W].')
  if len(labels) != trajectories.shape[0]:
    raise ValueError(f'{len(labels)} labels for {trajectories.shape[0]} bands.')
  if scores_BR is not None and np.shape(scores_BR) != trajectories.shape[:2]:
    raise ValueError(f'scores have shape {np.shape(scores_BR)}, expected '
                     f'{trajectories.shape[:2]} (bands, rules).')
  return trajectories


def _captions(scores_BR: np.ndarray | None, prefix: str) -> list[list[str]] | None:
  if scores_BR is None:
    return None
  return [[f'{prefix}{s:.3f}' for s in row] for row in np.asarray(scores_BR)]


def filmstrip_times(num_frames: int, frame_stride: int = 2, strip_frames: int = 6) -> list[int]:
  """Frame indices a filmstrip shows: 0, stride, 2·stride, ... (at most strip_frames)."""
  if frame_stride < 1 or strip_frames < 1:
    raise errors.UserError(f'frame_stride={frame_stride} and strip_frames={strip_frames} '
                           'must be >= 1.')
  return list(range(0, num_frames, frame_stride))[:strip_frames]


def band_panel(trajectories_BRTHW: np.ndarray, labels: Sequence[str], num_states: int,
               scale: int = 4, frame_stride: int = 2, strip_frames: int = 6,
               scores_BR: np.ndarray | None = None) -> Image.Image:
  """Still image: a row per band, a filmstrip (t = 0, stride, ...) per rule."""
  trajectories = _check_grid(trajectories_BRTHW, labels, scores_BR)
  bands, rules, num_frames, grid, _ = trajectories.shape
  times = filmstrip_times(num_frames, frame_stride, strip_frames)
  layout = Layout(bands, rules, grid * scale, len(times))
  cells = frames_to_rgb(trajectories[:, :, times], num_states, scale)
  header = f'gzip band  |  frames: t = {", ".join(map(str, times))}'
  return _draw_grid(cells, layout, labels, _captions(scores_BR, 'gzip '), header)


def band_animation(trajectories_BRTHW: np.ndarray, labels: Sequence[str], num_states: int,
                   scale: int = 4, scores_BR: np.ndarray | None = None) -> list[Image.Image]:
  """One RGB image per recorded frame: a row per band, a cell per rule."""
  trajectories = _check_grid(trajectories_BRTHW, labels, scores_BR)
  bands, rules, num_frames, grid, _ = trajectories.shape
  layout = Layout(bands, rules, grid * scale, 1)
  captions = _captions(scores_BR, '')
  images = []
  for t in range(num_frames):
    cells = frames_to_rgb(trajectories[:, :, t:t + 1], num_states, scale)
    header = f'gzip band, score  |  t = {t} of {num_frames - 1}'
    images.append(_draw_grid(cells, layout, labels, captions, header))
  return images


def save_gif(images: Sequence[Image.Image], path: str, duration_ms: int = 200) -> None:
  """Looping GIF; colours are kept exact whenever the frames use ≤ 256 of them."""
  rgb = np.stack([np.asarray(image.convert('RGB')) for image in images])
  rgb = rgb.astype(np.uint32)
  packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
  colours = np.unique(packed)
  if len(colours) <= 256:
    flat_palette = np.stack([colours >> 16, (colours >> 8) & 255, colours & 255], -1)
    flat_palette = flat_palette.astype(np.uint8).ravel().tolist()
    indices = np.searchsorted(colours, packed).astype(np.uint8)
    frames = []
    for index_HW in indices:
      frame = Image.frombytes('P', index_HW.shape[::-1], index_HW.tobytes())
      frame.putpalette(flat_palette)
      frames.append(frame)
  else:
    frames = [image.convert('RGB').quantize(256, dither=Image.Dither.NONE) for image in images]
  frames[0].save(path, save_all=True, append_images=frames[1:], duration=duration_ms,
                 loop=0, optimize=False)


def save_png(path: str, picture_HW3: np.ndarray) -> None:
  """A uint8 H×W×3 array as a PNG, written atomically."""
  with files.atomic_path(path) as tmp:
    Image.fromarray(picture_HW3).save(tmp, format='PNG')


def probe_picture(previous, truth, predicted, num_states: int, rows: int = 4,
                  scale: int = 8) -> np.ndarray:
  """Rows of [previous frame | true next frame | decoded next frame], uint8 HWC."""
  gap = np.full((previous.shape[1] * scale, scale, 3), 255, np.uint8)
  lines = []
  for i in range(min(rows, len(previous))):
    tiles = [frames_to_rgb(f[i], num_states, scale) for f in (previous, truth, predicted)]
    lines.append(np.concatenate([tiles[0], gap, tiles[1], gap, tiles[2]], axis=1))
    lines.append(np.full((scale, lines[-1].shape[1], 3), 255, np.uint8))
  return np.concatenate(lines[:-1], axis=0)


def plot_curves(jsonl_path: str, png_path: str,
                keys: tuple[str, ...] = ('train/loss', 'eval/loss'), *,
                log_y: bool = False, size: tuple[int, int] = (800, 500),
                title: str | None = None) -> None:
  """A PNG (`size` = width, height in pixels) of `keys` against step, written atomically."""
  # Imported here: only plotting needs matplotlib, and its import is slow.
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  from matplotlib.ticker import FormatStrFormatter

  records = metrics.read_jsonl(jsonl_path)
  dpi = 100
  fig = Figure(figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  plotted = 0
  for key in keys:
    points = [(r['step'], r[key]) for r in records if r.get(key) is not None]
    if not points:
      continue
    steps, values = zip(*points)
    ax.plot(steps, values, label=key, marker='o' if len(points) <= 50 else None,
            markersize=3)
    plotted += 1
  if plotted:
    ax.legend()
  else:
    ax.text(0.5, 0.5, f'no data for {", ".join(keys)}', ha='center', va='center',
            transform=ax.transAxes)
  if log_y and plotted:
    ax.set_yscale('log')
    ax.yaxis.set_major_formatter(FormatStrFormatter('%g'))
    ax.yaxis.set_minor_formatter(FormatStrFormatter('%g'))
  ax.set_xlabel('step')
  leaves = {key.rsplit('/', 1)[-1] for key in keys}
  ax.set_ylabel(leaves.pop() if len(leaves) == 1 else 'value')
  ax.set_title(title or os.path.basename(os.path.dirname(os.path.abspath(jsonl_path))))
  ax.grid(True, alpha=0.3)
  fig.tight_layout()

  os.makedirs(os.path.dirname(os.path.abspath(png_path)), exist_ok=True)
  with files.atomic_path(png_path) as tmp:
    fig.savefig(tmp, format='png', dpi=dpi)
