"""Pictures of trajectories: exact colours, layout sizes, PNG/GIF files, the command line."""
import os
import shutil
import tempfile

from absl import flags
from absl.testing import absltest
import numpy as np
from PIL import Image

from ncalm import errors
from ncalm import viz
from ncalm.data import nca
from ncalm.tools import render

TINY = nca.NCAConfig(frames=6)           # published grid and states, 6 recorded frames
TINY_BANDS = [None, (0.5, 1.0)]          # unfiltered and the default band (~45% accepted)
RULES = 2
SCALE = 2


def expected_cell_width(layout: viz.Layout, frames: int) -> int:
  strip = frames * layout.frame_size + (frames - 1) * layout.frame_gap
  return max(strip, layout.min_cell_width)


def expected_size(layout: viz.Layout, strip_frames: int) -> tuple[int, int]:
  """Image size from the layout parameters, written out independently of Layout.size."""
  cell = expected_cell_width(layout, strip_frames)
  width = (2 * layout.margin + layout.label_width + layout.columns * cell
           + (layout.columns - 1) * layout.column_gap)
  height = (2 * layout.margin + layout.header_height
            + layout.rows * (layout.caption_height + layout.frame_size)
            + (layout.rows - 1) * layout.row_gap)
  return width, height


def expected_origin(layout: viz.Layout, band: int, rule: int, frame: int = 0):
  """(x, y) of a frame's top-left pixel, written out independently of Layout."""
  cell = expected_cell_width(layout, layout.frames_per_cell)
  x = (layout.margin + layout.label_width + rule * (cell + layout.column_gap)
       + frame * (layout.frame_size + layout.frame_gap))
  y = (layout.margin + layout.header_height + layout.caption_height
       + band * (layout.caption_height + layout.frame_size + layout.row_gap))
  return x, y


def crop(image: Image.Image, origin: tuple[int, int], size: int) -> np.ndarray:
  x, y = origin
  return np.asarray(image.convert('RGB'))[y:y + size, x:x + size]


class PaletteTest(absltest.TestCase):

  def test_base_colours_are_distinct_and_not_background(self):
    colours = viz.palette(10)
    self.assertEqual(colours.shape, (10, 3))
    self.assertEqual(colours.dtype, np.uint8)
    self.assertLen({tuple(c) for c in colours}, 10)
    self.assertNotIn(viz.BACKGROUND, {tuple(int(v) for v in c) for c in colours})

  def test_more_states_extend_the_base_colours_distinctly(self):
    colours = viz.palette(300)
    np.testing.assert_array_equal(colours[:10], viz.BASE_PALETTE)
    self.assertLen({tuple(c) for c in colours}, 300)
    np.testing.assert_array_equal(viz.palette(4), viz.BASE_PALETTE[:4])


class FramesToRgbTest(absltest.TestCase):

  def test_every_upscaled_pixel_is_its_states_colour(self):
    num_states, scale = 10, 3
    frames = np.random.default_rng(0).integers(0, num_states, (4, 5, 7))
    frames[0, 0, :num_states // 2] = np.arange(num_states // 2)
    rgb = viz.frames_to_rgb(frames, num_states, scale)
    self.assertEqual(rgb.shape, (4, 5 * scale, 7 * scale, 3))
    self.assertEqual(rgb.dtype, np.uint8)
    colours = viz.palette(num_states)
    expected = np.zeros_like(rgb)
    for t in range(4):
      for y in range(5 * scale):
        for x in range(7 * scale):
          expected[t, y, x] = colours[frames[t, y // scale, x // scale]]
    np.testing.assert_array_equal(rgb, expected)

  def test_rejects_states_outside_the_palette(self):
    with self.assertRaisesRegex(ValueError, 'num_states=3'):
      viz.frames_to_rgb(np.array([[[0, 3]]]), 3, 1)
    with self.assertRaisesRegex(ValueError, 'scale=0'):
      viz.frames_to_rgb(np.zeros((1, 2, 2), int), 3, 0)


class RenderBandsTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    out = tempfile.mkdtemp()
    cls.addClassCleanup(shutil.rmtree, out)
    cls.png_path = os.path.join(out, 'bands.png')
    cls.gif_path = os.path.join(out, 'bands.gif')
    cls.rendered = render.render_bands(0, TINY_BANDS, RULES, TINY, 'fast', cls.png_path,
                                       cls.gif_path, scale=SCALE, frame_stride=2,
                                       strip_frames=6)

  def test_data_has_one_row_per_band_and_scores_in_band(self):
    r = self.rendered
    self.assertEqual(r.trajectories.shape, (2, RULES, TINY.frames, TINY.grid, TINY.grid))
    self.assertEqual(r.scores.shape, (2, RULES))
    self.assertEqual(r.labels, ['all', '0.5-1.0'])
    self.assertTrue(np.all((r.scores[1] > 0.5) & (r.scores[1] < 1.0)), r.scores)

  def test_png_size_and_filmstrip_pixels(self):
    times = [0, 2, 4]  # every 2nd of 6 frames
    layout = viz.Layout(2, RULES, TINY.grid * SCALE, len(times))
    with Image.open(self.png_path) as png:
      self.assertEqual(png.format, 'PNG')
      self.assertEqual(png.size, expected_size(layout, len(times)))
      for band in range(2):
        for rule in range(RULES):
          for i, t in enumerate(times):
            want = viz.frames_to_rgb(self.rendered.trajectories[band, rule, t],
                                        TINY.num_states, SCALE)
            got = crop(png, expected_origin(layout, band, rule, i), layout.frame_size)
            np.testing.assert_array_equal(got, want, err_msg=f'{band=} {rule=} {t=}')

  def test_gif_size_frame_count_and_exact_colours(self):
    layout = viz.Layout(2, RULES, TINY.grid * SCALE, 1)
    with Image.open(self.gif_path) as gif:
      self.assertEqual(gif.format, 'GIF')
      self.assertEqual(gif.size, expected_size(layout, 1))
      self.assertEqual(gif.n_frames, TINY.frames)
      for t in range(TINY.frames):
        gif.seek(t)
        for band in range(2):
          for rule in range(RULES):
            want = viz.frames_to_rgb(self.rendered.trajectories[band, rule, t],
                                        TINY.num_states, SCALE)
            got = crop(gif, expected_origin(layout, band, rule), layout.frame_size)
            np.testing.assert_array_equal(got, want, err_msg=f'{band=} {rule=} {t=}')

  def test_same_seed_same_trajectories(self):
    again, scores = render.sample_band_trajectories(0, TINY_BANDS, RULES, TINY, 'fast')
    np.testing.assert_array_equal(again, self.rendered.trajectories)
    np.testing.assert_array_equal(scores, self.rendered.scores)


class CommandLineTest(absltest.TestCase):

  def flag_values(self, *args: str) -> flags.FlagValues:
    fv = flags.FlagValues()
    render.define_flags(fv)
    fv(['render', *args])
    return fv

  def test_parse_bands(self):
    self.assertEqual(render.parse_bands('0.0,0.2:0.5,1.0:all'), [(0.0, 0.2), (0.5, 1.0), None])
    self.assertLen(render.parse_bands(render.DEFAULT_BANDS), 5)

  def test_bad_bands_name_the_flag_and_the_format(self):
    for bad in ('0.2-0.3', '0.3,0.2', '0.5,1.5', '0.1,0.2,0.3', '', '0.1,0.2:'):
      with self.subTest(bad=bad):
        with self.assertRaisesRegex(errors.UserError,
                                    r"--bands=.*expected bands separated by ':'"):
          render.parse_bands(bad)

  def test_out_dir_that_cannot_be_made_is_a_user_error(self):
    blocker = self.create_tempfile('a_file').full_path
    fv = self.flag_values(f'--out_dir={blocker}/pictures', '--bands=all')
    with self.assertRaisesRegex(errors.UserError, '--out_dir=.*a_file/pictures'):
      render.run(fv)

  def test_unexpected_arguments_are_a_user_error(self):
    with self.assertRaisesRegex(errors.UserError, 'unexpected arguments: extra'):
      render.main(['render', 'extra'])

  def test_bad_bands_flag_is_refused_at_parse_time(self):
    out = self.create_tempdir().full_path
    with self.assertRaisesRegex(flags.IllegalFlagValueError, r'--bands.*low,high'):
      self.flag_values(f'--out_dir={out}', '--bands=0.2-0.3')

  def test_out_dir_is_required(self):
    with self.assertRaisesRegex(flags.IllegalFlagValueError, 'out_dir'):
      self.flag_values('--bands=all')

  def test_writes_png_and_gif(self):
    out = os.path.join(self.create_tempdir().full_path, 'pictures')
    fv = self.flag_values(f'--out_dir={out}', '--bands=all:0.5,1.0', f'--rules_per_band={RULES}',
                          f'--frames={TINY.frames}', '--scale=1')
    rendered = render.run(fv)
    self.assertEqual(rendered.png_path, os.path.join(out, render.PNG_NAME))
    self.assertEqual(rendered.gif_path, os.path.join(out, render.GIF_NAME))
    with Image.open(rendered.gif_path) as gif:
      self.assertEqual(gif.n_frames, TINY.frames)
    with Image.open(rendered.png_path) as png:
      self.assertEqual(png.size, expected_size(viz.Layout(2, RULES, TINY.grid, 3), 3))


if __name__ == '__main__':
  absltest.main()
