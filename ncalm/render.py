"""Pictures of NCA trajectories: one row per complexity band, one column per rule (SPEC §8).

`render_bands` samples a few rules in each gzip band, rolls them out and writes

  * a PNG: each rule as a filmstrip of frames t = 0, 2, 4, ... (6 by default);
  * a GIF: each rule as one cell, animated over all recorded frames.

Every cell is drawn with one fixed colour per state (`palette`), scaled up by whole
pixels, so a picture shows exactly the states the model is trained on. Only numpy and
Pillow are used for drawing.

    python -m ncalm.render --out_dir=/tmp/render_out --seed=0 \\
        --bands=0.0,0.2:0.2,0.3:0.3,0.4:0.4,0.5:0.5,1.0 --rules_per_band=4 \\
        --frames=27 --mode=fast

writes /tmp/render_out/nca_bands.png and /tmp/render_out/nca_bands.gif in ~15-20 s on
2 CPU cores. `--bands` also takes `all` for an unfiltered row.
"""
from __future__ import annotations

import colorsys
import dataclasses
import functools
import os
from typing import Sequence

from absl import flags
import jax
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ncalm import cli, complexity, errors, nca

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
DEFAULT_BANDS = '0.0,0.2:0.2,0.3:0.3,0.4:0.4,0.5:0.5,1.0'
PNG_NAME, GIF_NAME = 'nca_bands.png', 'nca_bands.gif'
MIN_CANDIDATES = 4096  # candidates sampled per band before a band counts as unreachable


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


_rollout = jax.jit(nca.rollout, static_argnames=('cfg', 'mode'))


@dataclasses.dataclass(frozen=True)
class Rendered:
  """What `render_bands` drew and where it wrote it."""
  png_path: str
  gif_path: str
  trajectories: np.ndarray   # int32 [bands, rules, frames, H, W]
  scores: np.ndarray         # float64 [bands, rules]: each rule's gzip score
  labels: list[str]          # one per band


def sample_band_trajectories(seed: int, bands: Sequence[Band], rules_per_band: int,
                             cfg: nca.NCAConfig, mode: str = 'fast',
                             max_rounds: int | None = None
                             ) -> tuple[np.ndarray, np.ndarray]:
  """(trajectories [B, R, T, H, W], scores [B, R]), deterministic in seed.

  Band b's rules come from `sample_rule_bank(fold_in(PRNGKey(seed), b), ...)`; rule
  column j uses simulation key `split(PRNGKey(seed + 1), rules_per_band)[j]` in every
  band.
  """
  if rules_per_band < 1:
    raise errors.UserError(f'rules_per_band={rules_per_band} must be >= 1.')
  if not bands:
    raise errors.UserError('bands is empty: give at least one band (or None for unfiltered).')
  if max_rounds is None:
    max_rounds = max(complexity.DEFAULT_MAX_ROUNDS, -(-MIN_CANDIDATES // rules_per_band))
  sim_keys = jax.random.split(jax.random.PRNGKey(seed + 1), rules_per_band)
  trajectories, scores = [], []
  for index, band in enumerate(bands):
    key = jax.random.fold_in(jax.random.PRNGKey(seed), index)
    bank = complexity.sample_rule_bank(key, rules_per_band, band, cfg, mode, max_rounds)
    trajectories.append(np.asarray(_rollout(bank.keys, sim_keys, cfg, mode)))
    scores.append(bank.scores)
  return np.stack(trajectories), np.stack(scores)


def render_bands(seed: int, bands: Sequence[Band], rules_per_band: int,
                 cfg: nca.NCAConfig, mode: str, png_path: str, gif_path: str,
                 scale: int = 4, frame_stride: int = 2, strip_frames: int = 6,
                 duration_ms: int = 200) -> Rendered:
  """Samples rules per band, rolls them out, writes the filmstrip PNG and the GIF."""
  trajectories, scores = sample_band_trajectories(seed, bands, rules_per_band, cfg, mode)
  labels = [band_label(band) for band in bands]
  band_panel(trajectories, labels, cfg.num_states, scale, frame_stride, strip_frames,
             scores).save(png_path)
  save_gif(band_animation(trajectories, labels, cfg.num_states, scale, scores),
           gif_path, duration_ms)
  return Rendered(png_path, gif_path, trajectories, scores, labels)


# ------------------------------------------------------------------ command line


def parse_bands(text: str) -> list[Band]:
  """'0.2,0.3:0.5,1.0:all' → [(0.2, 0.3), (0.5, 1.0), None], or a clear error."""
  expected = ("expected bands separated by ':', each 'low,high' with "
              f"0 <= low < high <= 1 or 'all' (unfiltered), e.g. --bands={DEFAULT_BANDS}")
  bands = []
  for part in str(text).split(':'):
    part = part.strip()
    if part.lower() == 'all':
      bands.append(None)
      continue
    try:
      low, high = (float(x) for x in part.split(','))
      bands.append(complexity.check_band((low, high)))
    except ValueError as error:
      raise errors.UserError(f'--bands={text!r}: band {part!r} is invalid; {expected}. '
                             f'({error})') from None
  return bands


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """The command line's flags, defined on demand so importing this module defines none."""
  fv = dict(flag_values=flag_values)
  flags.DEFINE_string('out_dir', None, 'Directory for nca_bands.png and nca_bands.gif.', **fv)
  flags.DEFINE_integer('seed', 0, 'Seed of the rules and of their initial states.', **fv)
  flags.DEFINE_string('bands', DEFAULT_BANDS,
                      "gzip bands, ':'-separated 'low,high' pairs or 'all' (unfiltered).", **fv)
  flags.DEFINE_integer('rules_per_band', 4, 'Rules (columns) per band.', lower_bound=1, **fv)
  flags.DEFINE_integer('frames', 27, 'Recorded frames per trajectory.', lower_bound=1, **fv)
  flags.DEFINE_enum('mode', 'fast', list(nca.MODES), 'NCA rollout mode.', **fv)
  flags.DEFINE_integer('scale', 4, 'Pixels per cell side.', lower_bound=1, **fv)
  flags.DEFINE_integer('frame_stride', 2, 'Frames between filmstrip frames (PNG).',
                       lower_bound=1, **fv)
  flags.DEFINE_integer('strip_frames', 6, 'Frames per filmstrip (PNG).', lower_bound=1, **fv)
  flags.DEFINE_integer('duration_ms', 200, 'GIF frame duration in ms.', lower_bound=1, **fv)
  flags.mark_flag_as_required('out_dir', flag_values=flag_values)

  def bands_are_valid(text: str) -> bool:
    try:
      parse_bands(text)
    except ValueError as error:
      raise flags.ValidationError(str(error)) from None
    return True

  flags.register_validator('bands', bands_are_valid, flag_values=flag_values)


def run(flag_values: flags.FlagValues = flags.FLAGS) -> Rendered:
  """Renders what the (parsed) flags ask for; returns the paths and the data."""
  fv = flag_values
  bands = parse_bands(fv.bands)
  cfg = nca.NCAConfig(frames=fv.frames)
  try:
    os.makedirs(fv.out_dir, exist_ok=True)
  except OSError as error:
    raise errors.UserError(f'--out_dir={fv.out_dir!r}: cannot create it ({error}).') from None
  return render_bands(fv.seed, bands, fv.rules_per_band, cfg, fv.mode,
                      os.path.join(fv.out_dir, PNG_NAME), os.path.join(fv.out_dir, GIF_NAME),
                      fv.scale, fv.frame_stride, fv.strip_frames, fv.duration_ms)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise errors.UserError(f'unexpected arguments: {" ".join(argv[1:])} (every input is a '
                           '--flag; see --helpshort).')
  rendered = run(flags.FLAGS)
  print(rendered.png_path)
  print(rendered.gif_path)


if __name__ == '__main__':
  define_flags()
  cli.run(main)
