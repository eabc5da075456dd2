"""experiments/diagnose_transfer.py: its numbers against independent computations (numpy on
the checkpoint's arrays, the embedding rows of the batch, attention by hand from q and k),
its files, and its refusals."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from unittest import mock

from absl.testing import absltest
import jax
import numpy as np

from ncalm import checkpoint
from ncalm import errors
from ncalm import files
from ncalm import startup
from ncalm import step as step_lib
from ncalm import train
from ncalm.data import text

import helpers
import tiny_config
import xla_env

SCRIPT = os.path.join(helpers.REPO, 'experiments', 'diagnose_transfer.py')
NCA_VOCAB = 10_002


def load_tool():
  spec = importlib.util.spec_from_file_location('diagnose_transfer', SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


diagnose_transfer = load_tool()


def snapshot(directory: str) -> dict[str, tuple[int, int]]:
  out = {}
  for root, dirs, names in os.walk(directory):
    for name in dirs + names:
      stat = os.stat(os.path.join(root, name))
      out[os.path.relpath(os.path.join(root, name), directory)] = (stat.st_size, stat.st_mtime_ns)
  return out


def softmax_stats(q, k, segments=None):
  """(entropy [H], distance [H]) by hand in float64: causal softmax(q·k/√d), mean over rows
  and queries of -Σ p log p and of Σ p·(q - k)."""
  q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
  batch, length, heads, dim = q.shape
  entropy, distance = np.zeros((batch, heads, length)), np.zeros((batch, heads, length))
  for b in range(batch):
    for h in range(heads):
      for i in range(length):
        keys = [j for j in range(i + 1) if segments is None or segments[b, j] == segments[b, i]]
        s = np.array([q[b, i, h] @ k[b, j, h] for j in keys]) / np.sqrt(dim)
        p = np.exp(s - s.max())
        p /= p.sum()
        entropy[b, h, i] = -np.sum(p * np.log(p))
        distance[b, h, i] = np.sum(p * (i - np.array(keys)))
  return entropy.mean(axis=(0, 2)), distance.mean(axis=(0, 2))


def rotary(x, theta):
  """Rotate-half RoPE over the last axis of [B, L, H, D], in float64."""
  length, dim = x.shape[1], x.shape[-1]
  freq = theta ** (-np.arange(0, dim, 2) / dim)
  angle = np.arange(length)[:, None] * freq[None, :]
  sin, cos = np.sin(angle)[None, :, None, :], np.cos(angle)[None, :, None, :]
  x1, x2 = x[..., :dim // 2], x[..., dim // 2:]
  return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


class DiagnoseTransferTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp()
    cls.addClassCleanup(shutil.rmtree, cls.tmp, ignore_errors=True)
    cls.data_dir = helpers.make_corpus(os.path.join(cls.tmp, 'corpus'))
    cls.stage1_dir = os.path.join(cls.tmp, 'stage1')
    stage1_cfg = tiny_config.get_config()
    stage1_cfg.train_steps = 2
    train.train_and_evaluate(stage1_cfg, cls.stage1_dir)
    before = snapshot(cls.stage1_dir)
    cls.cfg = helpers.text_config(cls.data_dir)
    cls.out = os.path.join(cls.tmp, 'out')
    cls.result = diagnose_transfer.diagnose(cls.cfg, cls.stage1_dir, cls.out)
    cls.stage1_untouched = snapshot(cls.stage1_dir) == before

    setup1 = step_lib.create_setup(stage1_cfg, startup.model_config(stage1_cfg, NCA_VOCAB))
    state, _ = checkpoint.load_latest(cls.stage1_dir, stage1_cfg, setup1)
    cls.stage1 = {k[len('params/'):]: v for k, v in helpers.flat(state).items()
                  if k.startswith('params/')}
    cls.model = startup.check(cls.cfg).model
    setup2 = step_lib.create_setup(cls.cfg, cls.model)
    init_key, _ = jax.random.split(jax.random.PRNGKey(cls.cfg.seed))
    cls.setup2 = setup2
    cls.fresh_params = step_lib.create_state(setup2, init_key).params
    cls.fresh = helpers.flat(cls.fresh_params)
    feed = text.open_feed(cls.data_dir, 'train', cls.cfg.seq_len, cls.cfg.seed, True)
    cls.tokens = feed.read_rows(0, cls.cfg.global_batch)[:, :-1]

  def test_weight_statistics_are_numpys_on_the_checkpoint_arrays(self):
    rows = self.result['weights']
    self.assertLen(rows, 2 * 9 + 1)   # 9 tensors a layer (stacked in the checkpoint) + final norm
    for row in rows:
      name = row['name'] if row['layer'] is None else f'layers/{row["name"]}'
      pick = lambda x, row=row: x if row['layer'] is None else x[row['layer']]
      s1 = np.asarray(pick(self.stage1[name]), np.float64)
      s0 = np.asarray(pick(self.fresh[name]), np.float64)
      self.assertEqual(row['stage1']['std'], float(np.std(s1)), row)
      self.assertEqual(row['stage1']['mean'], float(np.mean(s1)), row)
      self.assertEqual(row['fresh']['std'], float(np.std(s0)), row)
      self.assertEqual(row['fresh']['mean'], float(np.mean(s0)), row)
      self.assertEqual(row['how'], 'kept')
      if name.endswith('norm/scale'):   # fresh norm scales are ones: no std ratio
        self.assertEqual(row['fresh']['std'], 0.0)
        self.assertIsNone(row['std_ratio'])
      else:
        self.assertEqual(row['std_ratio'], float(np.std(s1)) / float(np.std(s0)))
    self.assertTrue(self.stage1_untouched)

  def test_residual_after_the_embedding_is_the_rms_of_the_batchs_embedding_rows(self):
    rows = np.asarray(self.fresh['embedding'], np.float64)[self.tokens]
    want = float(np.sqrt(np.mean(np.square(rows))))
    res = self.result['residual_rms']
    self.assertEqual(res['after'], ['embedding', 'layer 0', 'layer 1'])
    # init.embedding='normal': the transferred run's embedding is its own fresh one.
    self.assertEqual(res['transferred'][0], want)
    self.assertEqual(res['scratch'][0], want)
    self.assertNotEqual(res['transferred'][2], res['scratch'][2])

  def test_captured_stream_is_the_configured_models(self):
    """The last residual, normed and projected by the head, gives the (scanned) model's
    logits; its RMS per layer is the one reported for scratch."""
    params = diagnose_transfer.per_layer(self.fresh_params)
    stream, _, _ = diagnose_transfer.residual_stream(self.model, params, self.tokens)
    np.testing.assert_allclose([diagnose_transfer.rms(x) for x in stream],
                               self.result['residual_rms']['scratch'], rtol=1e-6)
    x = np.asarray(stream[-1], np.float64)
    normed = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.model.norm_eps)
    logits = (normed * self.fresh['final_norm/scale']) @ self.fresh['head']
    want = self.setup2.model.apply({'params': self.fresh_params}, self.tokens)
    np.testing.assert_allclose(logits, want, atol=1e-5)

  def test_attention_statistics_by_hand_on_a_small_case(self):
    rng = np.random.default_rng(0)
    q, k = rng.normal(size=(2, 6, 3, 4)) * 2, rng.normal(size=(2, 6, 3, 4)) * 2
    segments = np.array([[0, 0, 0, 1, 1, 1], [0, 1, 1, 1, 2, 2]])
    for seg in (None, segments):
      entropy, distance = diagnose_transfer.attention_stats(
          q.astype(np.float32), k.astype(np.float32), seg)
      want_entropy, want_distance = softmax_stats(q.astype(np.float32), k.astype(np.float32), seg)
      np.testing.assert_allclose(entropy, want_entropy, rtol=1e-5)
      np.testing.assert_allclose(distance, want_distance, rtol=1e-5)
    uniform = diagnose_transfer.uniform_stats(self.model, np.zeros((1, 5), np.int32))
    np.testing.assert_allclose(uniform, (np.mean(np.log(np.arange(1, 6))), 1.0), rtol=1e-6)

  def test_layer_0_attention_by_hand_from_its_queries_and_keys(self):
    """Layer 0 sees the embedding rows: RMSNorm, the query and key projections and RoPE in
    float64 numpy from the checkpoint (transferred) and the fresh init (scratch)."""
    x = np.asarray(self.fresh['embedding'], np.float64)[self.tokens]
    normed = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.model.norm_eps)
    for arm, params in (('transferred', self.stage1), ('scratch', self.fresh)):
      layer = {n: np.asarray(params[f'layers/{n}'][0], np.float64)
               for n in ('attn_norm/scale', 'attn/query', 'attn/key')}
      h = normed * layer['attn_norm/scale']
      q = rotary(np.einsum('ble,ehd->blhd', h, layer['attn/query']), self.model.rope_theta)
      k = rotary(np.einsum('ble,ehd->blhd', h, layer['attn/key']), self.model.rope_theta)
      entropy, distance = softmax_stats(q, k)
      got = self.result['attention']
      np.testing.assert_allclose(got['entropy'][arm][0], entropy, rtol=1e-5, err_msg=arm)
      np.testing.assert_allclose(got['distance'][arm][0], distance, rtol=1e-4, err_msg=arm)
    self.assertEqual(np.shape(got['entropy']['transferred']), (2, 4))

  def test_writes_json_and_markdown_atomically(self):
    with open(os.path.join(self.out, 'diagnosis.json')) as f:
      self.assertEqual(json.load(f), json.loads(json.dumps(self.result)))
    with open(os.path.join(self.out, 'diagnosis.md')) as f:
      markdown = f.read()
    for part in ('## Weights', '| final_norm/scale | – | kept |', '## Residual-stream RMS',
                 '| embedding |', '## Attention', '| 1 | 3 |'):
      self.assertIn(part, markdown)
    self.assertEqual(sorted(os.listdir(self.out)),
                     ['diagnosis.json', 'diagnosis.md', 'transfer.json'])
    out = self.create_tempdir().full_path
    with mock.patch.object(diagnose_transfer.files, 'atomic_open',
                           wraps=files.atomic_open) as opened:
      diagnose_transfer.write(self.result, out)
    self.assertEqual([c.args[0] for c in opened.call_args_list],
                     [os.path.join(out, 'diagnosis.json'), os.path.join(out, 'diagnosis.md')])

  def test_refusals_are_user_errors(self):
    out = os.path.join(self.create_tempdir().full_path, 'out')
    missing = os.path.join(self.tmp, 'no_such_run')
    with self.assertRaisesRegex(errors.UserError, '--stage1=.*does not exist'):
      diagnose_transfer.diagnose(self.cfg, missing, out)
    with self.assertRaisesRegex(errors.UserError, 'is the stage-1 workdir'):
      diagnose_transfer.diagnose(self.cfg, self.stage1_dir, self.stage1_dir)
    wider = helpers.text_config(self.data_dir)
    wider.model.d_model = 64
    with self.assertRaisesRegex(errors.UserError, 'has shape .*d_model'):
      diagnose_transfer.diagnose(wider, self.stage1_dir, out)
    deeper = helpers.text_config(self.data_dir)
    deeper.model.num_layers = 3
    with self.assertRaisesRegex(errors.UserError, 'has 2 layers but model.num_layers=3'):
      diagnose_transfer.diagnose(deeper, self.stage1_dir, out)
    with self.assertRaisesRegex(errors.UserError, 'prepared text dataset'):
      diagnose_transfer.diagnose(tiny_config.get_config(), self.stage1_dir, out)
    self.assertFalse(os.path.exists(out))

  def test_command_line_refusal_is_one_paragraph(self):
    config = os.path.join(helpers.REPO, 'tests', 'tiny_config.py') + ':text'
    proc = subprocess.run(
        [sys.executable, SCRIPT, f'--config={config}', f'--stage1={self.tmp}/no_such_run',
         f'--out={self.tmp}/cli_out'], capture_output=True, text=True, timeout=300,
        env=xla_env.child_env(), cwd=helpers.REPO)
    self.assertEqual(proc.returncode, errors.EXIT_USER_ERROR, proc.stderr[-2000:])
    self.assertIn('--stage1=', proc.stderr)
    self.assertNotIn('Traceback', proc.stderr)


if __name__ == '__main__':
  absltest.main()
