"""Pictures of NCA trajectories: a row per complexity band, a column per rule (docs/method.md §8).

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

import dataclasses
import os
from typing import Sequence

from absl import flags
import jax
import numpy as np

from ncalm import cli
from ncalm import errors
from ncalm import viz
from ncalm.data import complexity
from ncalm.data import nca

DEFAULT_BANDS = '0.0,0.2:0.2,0.3:0.3,0.4:0.4,0.5:0.5,1.0'
PNG_NAME, GIF_NAME = 'nca_bands.png', 'nca_bands.gif'
MIN_CANDIDATES = 4096  # candidates sampled per band before a band counts as unreachable

_rollout = jax.jit(nca.rollout, static_argnames=('cfg', 'mode'))


@dataclasses.dataclass(frozen=True)
class Rendered:
  """What `render_bands` drew and where it wrote it."""
  png_path: str
  gif_path: str
  trajectories: np.ndarray   # int32 [bands, rules, frames, H, W]
  scores: np.ndarray         # float64 [bands, rules]: each rule's gzip score
  labels: list[str]          # one per band


def sample_band_trajectories(seed: int, bands: Sequence[viz.Band], rules_per_band: int,
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


def render_bands(seed: int, bands: Sequence[viz.Band], rules_per_band: int,
                 cfg: nca.NCAConfig, mode: str, png_path: str, gif_path: str,
                 scale: int = 4, frame_stride: int = 2, strip_frames: int = 6,
                 duration_ms: int = 200) -> Rendered:
  """Samples rules per band, rolls them out, writes the filmstrip PNG and the GIF."""
  trajectories, scores = sample_band_trajectories(seed, bands, rules_per_band, cfg, mode)
  labels = [viz.band_label(band) for band in bands]
  viz.band_panel(trajectories, labels, cfg.num_states, scale, frame_stride, strip_frames,
             scores).save(png_path)
  viz.save_gif(viz.band_animation(trajectories, labels, cfg.num_states, scale, scores),
           gif_path, duration_ms)
  return Rendered(png_path, gif_path, trajectories, scores, labels)


# ------------------------------------------------------------------ command line


def parse_bands(text: str) -> list[viz.Band]:
  """'0.2,0.3:0.5,1.0:all' → [(0.2, 0.3), (0.5, 1.0), None], or a clear error."""
  expected = ("expected bands separated by ':', each 'low,high' with "
              f"0 <= low < high <= 1 or 'all' (unfiltered), e.g. --bands={DEFAULT_BANDS}")
  bands = []
  for part in str(text).split(':'):
    try:
      if not part.strip():
        raise errors.UserError('empty band')
      bands.append(complexity.parse_band(part))
    except errors.UserError as error:
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


def command() -> None:
  """`python -m ncalm.render` (or `-m ncalm.tools.render`)."""
  define_flags()
  cli.run(main)


if __name__ == '__main__':
  command()
