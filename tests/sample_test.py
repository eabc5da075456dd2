"""`python -m ncalm.sample` on tiny text and NCA runs: what it prints is the run's own greedy
continuation (by full forward passes) or the true and predicted NCA frames; bad flags are
one paragraph each."""
import contextlib
import io
import json
import os
import shutil
import tempfile

from absl import flags
from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np

from ncalm import decode
from ncalm import errors
from ncalm import run_files
from ncalm import run_model
from ncalm.data import nca_tokens
from ncalm.eval import heldout
from ncalm.tools import sample

import helpers


def sample_command(*args: str) -> str:
  """What `python -m ncalm.sample ARGS` prints (run in this process)."""
  argv = ['sample', *args]
  fv = flags.FlagValues()
  sample.define_flags(fv, argv)
  rest = fv(argv)
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    sample.main(rest, fv)
  return out.getvalue()


def greedy_by_full_passes(run, prompt_ids, new_tokens, allowed, stop_id=None):
  """The reference: the whole sequence through the run's model for every new token."""
  forward = jax.jit(lambda seq, last: run.setup.model.apply(
      {'params': run.params}, seq, logits_at=last)[0])
  seq = np.zeros((1, run.cfg.seq_len), np.int32)
  seq[0, :len(prompt_ids)] = prompt_ids
  out = []
  for i in range(len(prompt_ids), len(prompt_ids) + new_tokens):
    token = int(jnp.argmax(forward(jnp.asarray(seq), jnp.asarray([i - 1]))[:allowed]))
    if token == stop_id:
      break
    seq[0, i] = token
    out.append(token)
  return out


class TextSampleTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp()
    cls.addClassCleanup(shutil.rmtree, cls.tmp, ignore_errors=True)
    data = helpers.make_corpus(os.path.join(cls.tmp, 'data'))
    cls.workdir = os.path.join(cls.tmp, 'run')
    code, out = helpers.run_main(cls.workdir, 'text', [f'--config.data.text.path={data}'])
    assert code == 0, out[-3000:]
    cls.loaded = run_model.load(cls.workdir)
    cls.tok = run_model.tokenizer_of(cls.loaded)

  def test_prints_the_runs_greedy_continuation(self):
    prompt = 'def f(x):\n    return'
    out = sample_command(f'--workdir={self.workdir}', f'--prompt={prompt}',
                         '--max_new_tokens=12')
    want = greedy_by_full_passes(self.loaded, self.tok.encode(prompt), 12, self.tok.vocab_size,
                                 self.tok.eot_id)
    self.assertIn('stopped by', out)
    self.assertIn(prompt + self.tok.decode(want) + '\n', out)
    self.assertIn('0 of 1 samples were capped', out)

  def test_prompts_file_samples_and_seed(self):
    path = os.path.join(self.tmp, 'prompts.jsonl')
    with open(path, 'w') as f:
      f.write(json.dumps('import json\n') + '\n' + json.dumps({'prompt': 'class A:\n'}) + '\n')
    args = (f'--workdir={self.workdir}', f'--prompts_file={path}', '--num_samples=2',
            '--temperature=1.0', '--max_new_tokens=16', '--seed=3')
    out = sample_command(*args)
    self.assertEqual(out.count('=== prompt'), 4)
    self.assertIn('=== prompt 1, sample 1:', out)
    self.assertEqual(out, sample_command(*args))
    self.assertNotEqual(out, sample_command(*args[:-1], '--seed=4'))

  def test_capped_at_the_context_and_too_long_prompts(self):
    prompt = 'x = 1\n' * 10          # 60 byte tokens of the 64-token context
    out = sample_command(f'--workdir={self.workdir}', f'--prompt={prompt}',
                         '--max_new_tokens=20', '--stop=NEVER')
    self.assertIn('1 of 1 samples were capped at the context (64 tokens)', out)
    with self.assertRaisesRegex(errors.UserError, 'Prompt 0 is 66 tokens long.*context is 64'):
      sample_command(f'--workdir={self.workdir}', f'--prompt={prompt}abcdef')

  def test_bad_flags_are_one_paragraph_naming_the_flag(self):
    w = f'--workdir={self.workdir}'
    for args, message in (
        (('--prompt=a', '--temperature=-1'), '--temperature=-1.0 is negative'),
        (('--prompt=a', '--top_p=0'), r'--top_p=0.0 is outside \(0, 1\]'),
        (('--prompt=a', '--top_k=-1'), '--top_k=-1 is negative'),
        (('--prompt=a', '--num_samples=0'), '--num_samples=0 must be at least 1'),
        ((), 'exactly one of --prompt'),
        (('--prompt=a', '--config.seed=5'), '--config.seed cannot be changed')):
      with self.subTest(args=args):
        with self.assertRaisesRegex(errors.UserError, message):
          sample_command(w, *args)

  def test_a_workdir_without_an_intact_checkpoint(self):
    empty = os.path.join(self.tmp, 'no_checkpoint')
    os.makedirs(empty, exist_ok=True)
    shutil.copy(os.path.join(self.workdir, run_files.CONFIG), empty)
    with self.assertRaisesRegex(errors.UserError, 'no finished checkpoint'):
      sample_command(f'--workdir={empty}', '--prompt=a')
    with self.assertRaisesRegex(errors.UserError, 'not an ncalm workdir'):
      sample_command(f'--workdir={self.tmp}', '--prompt=a')


class NCASampleTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp()
    cls.addClassCleanup(shutil.rmtree, cls.tmp, ignore_errors=True)
    cls.workdir = os.path.join(cls.tmp, 'run')
    code, out = helpers.run_main(cls.workdir)
    assert code == 0, out[-3000:]

  def test_prints_true_and_predicted_frames_and_draws_them(self):
    png = os.path.join(self.tmp, 'frames.png')
    out = sample_command(f'--workdir={self.workdir}', '--rule=1', '--context_frames=1',
                         '--frames=1', f'--out={png}')
    run = run_model.load(self.workdir)
    source = run.feeds.val_source
    ncfg, tpf = source.cfg, source.tokens_per_frame
    truth = np.asarray(source.sequences(jnp.asarray(source.rule_keys)[1:2],
                                        jax.random.fold_in(heldout.eval_key(run.cfg), 0)[None]))
    model = run.setup.model.__class__(decode.decoding_config(run.setup.model.cfg))
    predicted = decode.greedy(model, run.params, jnp.asarray(truth[:, :tpf + 1]),
                              nca_tokens.patches_per_frame(ncfg), nca_tokens.start_of_frame(ncfg))
    cells = lambda ids: np.asarray(nca_tokens.decode_frames(jnp.asarray(ids), ncfg))[0]
    true_frame = cells(truth[:, tpf + 1:2 * tpf - 1])
    rows = [''.join(map(str, a)) + '   ' + ''.join(map(str, b))
            for a, b in zip(true_frame, cells(predicted))]
    self.assertIn('\n'.join(rows), out)
    accuracy = np.mean(true_frame == cells(predicted))
    self.assertIn(f'{accuracy:.1%} of cells right', out)
    self.assertTrue(os.path.getsize(png))

  def test_text_prompt_and_bad_rule_are_refused(self):
    with self.assertRaisesRegex(errors.UserError, 'is a nca run: it has no tokeniser'):
      sample_command(f'--workdir={self.workdir}', '--prompt=a')
    with self.assertRaisesRegex(errors.UserError, '--rule=99: the run has 4 held-out rules'):
      sample_command(f'--workdir={self.workdir}', '--rule=99')
    with self.assertRaisesRegex(errors.UserError, '--context_frames=2 plus --frames=1'):
      sample_command(f'--workdir={self.workdir}', '--context_frames=2')


if __name__ == '__main__':
  absltest.main()
