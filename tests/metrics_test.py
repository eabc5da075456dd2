"""Peak FLOPs, MFU, the JSONL/TensorBoard writer, the progress line and loss plots."""
import glob
import math
import os
import struct
import subprocess
import sys

from absl.testing import absltest
from absl.testing import parameterized
import jax.numpy as jnp
import numpy as np
from PIL import Image
from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import masked_crc32c

from ncalm import metrics
from ncalm import perf
from ncalm import viz


def read_events(logdir: str) -> list[event_pb2.Event]:
  """Every event in the TFRecord event files under `logdir`, checksums verified."""
  events = []
  for path in sorted(glob.glob(os.path.join(logdir, 'events.out.tfevents.*'))):
    with open(path, 'rb') as f:
      data = f.read()
    pos = 0
    while pos < len(data):
      header = data[pos:pos + 8]
      (length,) = struct.unpack('<Q', header)
      (length_crc,) = struct.unpack('<I', data[pos + 8:pos + 12])
      assert length_crc == masked_crc32c(header), f'bad length crc in {path}'
      payload = data[pos + 12:pos + 12 + length]
      (payload_crc,) = struct.unpack('<I', data[pos + 12 + length:pos + 16 + length])
      assert payload_crc == masked_crc32c(payload), f'bad payload crc in {path}'
      events.append(event_pb2.Event.FromString(payload))
      pos += 16 + length
  return events


def scalar_events(logdir: str) -> list[tuple[int, str, float]]:
  return [(e.step, v.tag, v.simple_value) for e in read_events(logdir)
          for v in e.summary.value if v.HasField('simple_value')]


class FakeClock:

  def __init__(self, t: float = 0.0):
    self.t = t

  def __call__(self) -> float:
    return self.t


class PeakFlopsTest(parameterized.TestCase):

  @parameterized.parameters(
      ('NVIDIA H100 80GB HBM3', 989e12),
      ('NVIDIA H100 PCIe', 989e12),
      ('NVIDIA H200', 989e12),
      ('NVIDIA A100-SXM4-80GB', 312e12),
      ('TPU v4', 275e12),
      ('TPU v5 lite', 197e12),
      ('TPU v5e', 197e12),
      ('TPU v5p', 459e12),
      ('TPU v5', 459e12),   # how JAX names a v5p chip
      ('TPU v6 lite', 918e12),
      ('TPU v6e', 918e12),
  )
  def test_table(self, device_kind, expected):
    self.assertEqual(perf.peak_flops(device_kind), expected)

  def test_v5_lite_is_not_v5p(self):
    self.assertEqual(perf.peak_flops('TPU v5 lite'), 197e12)
    self.assertEqual(perf.peak_flops('TPU v5p'), 459e12)
    self.assertEqual(perf.peak_flops('TPU v6 lite'), 918e12)

  def test_unknown_is_none(self):
    self.assertIsNone(perf.peak_flops('cpu'))
    self.assertIsNone(perf.peak_flops('Tesla V100'))

  def test_override(self):
    self.assertEqual(perf.peak_flops('cpu', override=5e10), 5e10)
    self.assertEqual(perf.peak_flops('TPU v4', override=1e12), 1e12)
    self.assertEqual(perf.peak_flops('TPU v4', override=0), 275e12)
    self.assertEqual(perf.peak_flops('TPU v4', override=-1.0), 275e12)
    self.assertIsNone(perf.peak_flops('cpu', override=0.0))

  def test_measured_matmul_flops(self):
    flops = perf.measured_matmul_flops(n=128, dtype=jnp.float32, repeats=2)
    self.assertTrue(math.isfinite(flops) and flops > 0)
    with self.assertRaisesRegex(ValueError, 'repeats=0'):
      perf.measured_matmul_flops(n=16, repeats=0)


class MfuTest(absltest.TestCase):

  def test_arithmetic(self):
    self.assertEqual(perf.mfu(1e9, 2e3, 4, 1e12), 0.5)
    self.assertEqual(perf.mfu(6e9, 12345.0, 8, 989e12), 6e9 * 12345.0 / (8 * 989e12))

  def test_unknown_peak(self):
    self.assertIsNone(perf.mfu(1e9, 2e3, 4, None))

  def test_bad_arguments(self):
    with self.assertRaisesRegex(ValueError, 'num_devices=0'):
      perf.mfu(1e9, 2e3, 0, 1e12)
    with self.assertRaisesRegex(ValueError, 'peak_per_device=0'):
      perf.mfu(1e9, 2e3, 1, 0.0)


class MetricsWriterTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.workdir = os.path.join(self.create_tempdir().full_path, 'run')

  def test_jsonl_round_trip(self):
    writer = metrics.MetricsWriter(self.workdir)
    writer.write(1, {'train/loss': np.float32(2.5), 'train/lr': 1e-4})
    writer.write(np.int64(2), {'train/loss': jnp.asarray(1.25), 'eval/loss': 3})
    # Flushed before close: a killed run keeps what it wrote.
    self.assertEqual(metrics.read_jsonl(writer.jsonl_path), [
        {'step': 1, 'train/loss': 2.5, 'train/lr': 1e-4},
        {'step': 2, 'train/loss': 1.25, 'eval/loss': 3.0},
    ])
    writer.close()
    with open(os.path.join(self.workdir, 'metrics.jsonl')) as f:
      self.assertEqual(f.read().splitlines(), [
          '{"step": 1, "train/loss": 2.5, "train/lr": 0.0001}',
          '{"step": 2, "train/loss": 1.25, "eval/loss": 3.0}',
      ])

  def test_tensorboard_scalars_and_image(self):
    writer = metrics.MetricsWriter(self.workdir)
    writer.write(1, {'train/loss': 2.5})
    writer.write(2, {'train/loss': 1.25, 'eval/loss': 3.0})
    image = np.zeros((6, 10, 3), np.uint8)
    image[:, :5] = 255
    writer.write_image(2, 'samples', image)
    writer.close()
    logdir = os.path.join(self.workdir, 'tensorboard')
    self.assertNotEmpty(glob.glob(os.path.join(logdir, 'events.out.tfevents.*')))
    self.assertEqual(scalar_events(logdir),
                     [(1, 'train/loss', 2.5), (2, 'train/loss', 1.25), (2, 'eval/loss', 3.0)])
    images = [(e.step, v.tag, v.image) for e in read_events(logdir)
              for v in e.summary.value if v.HasField('image')]
    self.assertLen(images, 1)
    step, tag, encoded = images[0]
    self.assertEqual((step, tag, encoded.height, encoded.width), (2, 'samples', 6, 10))

  def test_resume_truncates_lines_after_checkpoint(self):
    killed = metrics.MetricsWriter(self.workdir)
    for step in range(1, 6):
      killed.write(step, {'train/loss': float(step)})
    killed.close()
    resumed = metrics.MetricsWriter(self.workdir)   # a new process, resuming at step 3
    resumed.truncate_after(3)
    self.assertEqual([r['step'] for r in metrics.read_jsonl(resumed.jsonl_path)], [1, 2, 3])
    for step in (4, 5):
      resumed.write(step, {'train/loss': 10.0 * step})
    resumed.close()
    self.assertEqual(metrics.read_jsonl(resumed.jsonl_path),
                     [{'step': s, 'train/loss': v} for s, v in
                      ((1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0))])
    self.assertEqual(sorted(os.listdir(self.workdir)), ['metrics.jsonl', 'tensorboard'])
    # TensorBoard is told to drop the killed run's events after step 3.
    restarts = [e.step for e in read_events(os.path.join(self.workdir, 'tensorboard'))
                if e.HasField('session_log')
                and e.session_log.status == event_pb2.SessionLog.START]
    self.assertEqual(restarts, [4])

  def test_truncate_keeps_exactly_steps_up_to(self):
    writer = metrics.MetricsWriter(self.workdir)
    for step in (0, 1, 2, 2, 3, 7, 4):
      writer.write(step, {'x': step})
    writer.truncate_after(2)
    writer.write(3, {'x': 30})
    writer.close()
    self.assertEqual([(r['step'], r['x']) for r in metrics.read_jsonl(writer.jsonl_path)],
                     [(0, 0.0), (1, 1.0), (2, 2.0), (2, 2.0), (3, 30.0)])
    self.assertFalse(os.path.exists(writer.jsonl_path + '.tmp'))

  def test_cut_short_last_line_is_dropped(self):
    writer = metrics.MetricsWriter(self.workdir)
    writer.write(1, {'x': 1.0})
    writer.close()
    with open(writer.jsonl_path, 'a') as f:
      f.write('{"step": 2, "x"')   # killed mid-write
    self.assertEqual(metrics.read_jsonl(writer.jsonl_path), [{'step': 1, 'x': 1.0}])
    writer = metrics.MetricsWriter(self.workdir)
    writer.truncate_after(5)
    writer.write(2, {'x': 2.0})
    writer.close()
    self.assertEqual(metrics.read_jsonl(writer.jsonl_path),
                     [{'step': 1, 'x': 1.0}, {'step': 2, 'x': 2.0}])

  def test_corrupt_middle_line_raises(self):
    os.makedirs(self.workdir)
    path = os.path.join(self.workdir, 'metrics.jsonl')
    with open(path, 'w') as f:
      f.write('{"step": 1}\nnot json\n{"step": 2}\n')
    with self.assertRaisesRegex(ValueError, r'metrics.jsonl:2'):
      metrics.read_jsonl(path)

  def test_disabled_writer_creates_nothing(self):
    writer = metrics.MetricsWriter(self.workdir, enabled=False)
    writer.write(1, {'train/loss': 1.0})
    writer.write_image(1, 'samples', np.zeros((2, 2, 3), np.uint8))
    writer.truncate_after(0)
    writer.close()
    self.assertFalse(os.path.exists(self.workdir))

  def test_bad_inputs(self):
    writer = metrics.MetricsWriter(self.workdir)
    with self.assertRaisesRegex(ValueError, "'step' is reserved"):
      writer.write(1, {'step': 1.0})
    with self.assertRaisesRegex(ValueError, 'uint8 H×W×C'):
      writer.write_image(1, 'samples', np.zeros((2, 2, 3), np.float32))
    with self.assertRaisesRegex(ValueError, 'uint8 H×W×C'):
      writer.write_image(1, 'samples', np.zeros((2, 2), np.uint8))
    writer.close()

  def test_import_leaves_torch_unloaded_and_importable(self):
    # tensorboardX's writer imports torch whenever it is installed (the test extra installs
    # it); ncalm hides it for that import, which saves 2.5 s of every process start.
    code = ('import sys; from ncalm import metrics; loaded = "torch" in sys.modules; '
            'import torch; print(loaded, torch.ones(2).sum().item())')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    self.assertEqual(out.split(), ['False', '2.0'])


class ProgressTest(absltest.TestCase):

  def test_first_line_has_no_rate(self):
    progress = metrics.Progress(5000, 0, 8192, clock=FakeClock(10.0))
    self.assertEqual(progress.line(1, {'train/loss': 9.21}),
                     'step    1/5000 | loss 9.2100 | -- steps/s | -- tokens/s | ETA --')

  def test_rates_and_eta_between_lines(self):
    clock = FakeClock(100.0)
    progress = metrics.Progress(5000, 0, 8192, clock=clock)
    progress.line(1, {})
    clock.t = 140.0            # 120 steps in 40 s
    self.assertEqual(
        progress.line(121, {'train/loss': 2.34119, 'train/lr': 2.4e-5}),
        'step  121/5000 | loss 2.3412 | lr 2.4e-05 | 3.00 steps/s | 24.6k tokens/s | '
        'ETA 0:27:06')         # 4879 steps / 3 per s = 1626.3 s
    clock.t = 160.0            # the next interval alone: 80 steps in 20 s
    self.assertEqual(progress.line(201, {}),
                     'step  201/5000 | 4.00 steps/s | 32.8k tokens/s | ETA 0:20:00')
    self.assertEqual(progress.steps_per_second, 4.0)

  def test_update_time_is_used(self):
    clock = FakeClock(0.0)
    progress = metrics.Progress(1000, 500, 1000, clock=clock)   # resumed at 500
    progress.line(500, {})
    clock.t = 2.0
    progress.update(600)       # step 600 finished at t = 2
    clock.t = 7.0              # the line is made later: the update's time counts
    self.assertEqual(progress.line(600, {}),
                     'step  600/1000 | 50.00 steps/s | 50.0k tokens/s | ETA 0:00:08')

  def test_train_loop_usage(self):
    """update after each fetched step; tokens_per_second, then line, every few steps."""
    clock = FakeClock(0.0)
    progress = metrics.Progress(1000, 0, 1024, clock=clock)
    self.assertIsNone(progress.tokens_per_second())
    clock.t = 30.0             # step 1 includes compilation
    progress.update(1)
    self.assertIsNone(progress.tokens_per_second())
    for step in range(2, 101):
      clock.t = 30.0 + 0.5 * (step - 1)
      progress.update(step)
    self.assertEqual(progress.tokens_per_second(), 2048.0)   # 99 steps in 49.5 s
    scalars = {'train/loss': 3.0, 'perf/tokens_per_s': 2048.0, 'perf/step_s': 0.5,
               'perf/mfu': 0.25}
    self.assertEqual(progress.line(100, scalars),
                     'step  100/1000 | loss 3.0000 | mfu 25.0% | 2.00 steps/s | '
                     '2.0k tokens/s | ETA 0:07:30')
    self.assertEqual(progress.tokens_per_second(), 2048.0)   # no new step: same rate
    clock.t = 99.5             # step 100 was done at t = 79.5
    progress.update(110)       # 10 steps in 20 s since the last line
    self.assertEqual(progress.tokens_per_second(), 512.0)

  def test_scalar_order_and_formats(self):
    clock = FakeClock(0.0)
    progress = metrics.Progress(100_000, 0, 2_000_000, clock=clock)
    progress.line(0, {})
    clock.t = 3600.0
    line = progress.line(360, {'zeta': 12345.678, 'mfu': 0.4123, 'train/grad_norm': 0.98765,
                               'train/lr': 3e-4, 'eval/loss': 2.5, 'train/loss': 2.25,
                               'alpha': None})
    self.assertEqual(
        line, 'step    360/100000 | loss 2.2500 | eval/loss 2.5000 | lr 3.0e-04 | '
        'grad_norm 0.988 | mfu 41.2% | zeta 1.235e+04 | 0.1 steps/s | 200.0k tokens/s | '
        'ETA 276:46:40')   # 99640 steps at 0.1 per s
    self.assertLess(len(line), 160)

  def test_large_and_small_rates(self):
    clock = FakeClock(0.0)
    progress = metrics.Progress(10**6, 0, 4096, clock=clock)
    progress.line(0, {})
    clock.t = 2.0
    self.assertEqual(progress.line(1000, {}),
                     'step    1000/1000000 | 500 steps/s | 2.0M tokens/s | ETA 0:33:18')

  def test_bad_arguments(self):
    with self.assertRaisesRegex(ValueError, 'start_step=11'):
      metrics.Progress(10, 11, 1)
    with self.assertRaisesRegex(ValueError, 'total_steps=0'):
      metrics.Progress(0, 0, 1)


class PlotCurvesTest(absltest.TestCase):

  def test_writes_png_of_requested_size(self):
    workdir = self.create_tempdir().full_path
    writer = metrics.MetricsWriter(workdir)
    for step in range(1, 101):
      scalars = {'train/loss': 5.0 / step}
      if step % 25 == 0:
        scalars['eval/loss'] = 6.0 / step
      writer.write(step, scalars)
    writer.close()
    for log_y in (False, True):
      png = os.path.join(workdir, 'plots', f'loss_{log_y}.png')
      viz.plot_curves(writer.jsonl_path, png, log_y=log_y, size=(640, 480))
      with Image.open(png) as image:
        self.assertEqual((image.format, image.size), ('PNG', (640, 480)))
        self.assertGreater(len(np.unique(np.asarray(image.convert('RGB')))), 2)
      self.assertFalse(os.path.exists(png + '.tmp'))

  def test_missing_keys_still_write(self):
    workdir = self.create_tempdir().full_path
    writer = metrics.MetricsWriter(workdir)
    writer.write(1, {'other': 1.0})
    writer.close()
    png = os.path.join(workdir, 'empty.png')
    viz.plot_curves(writer.jsonl_path, png, keys=('train/loss',))
    with Image.open(png) as image:
      self.assertEqual(image.size, (800, 500))


if __name__ == '__main__':
  absltest.main()
