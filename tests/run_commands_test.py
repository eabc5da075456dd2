"""The commands that read a trained run, on tiny text and NCA runs (made once per process):
`python -m ncalm.sample` prints the run's own greedy continuation (by full forward passes)
or the true and predicted NCA frames; `python -m ncalm.evaluate` reports the numbers the
training loop logged, writes only under RUN/eval/STEP and resumes an interrupted
evaluation; bad flags are one paragraph each."""
import atexit
import contextlib
import functools
import io
import json
import os
import shutil
import tempfile
from unittest import mock

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
from ncalm.eval import nca_probe
from ncalm.eval import reports
from ncalm.tools import evaluate
from ncalm.tools import sample

import helpers


@functools.cache
def tiny_runs() -> dict[str, str]:
  """{'tmp', 'data', 'text', 'nca'}: a folder, a prepared corpus and two finished tiny runs."""
  tmp = tempfile.mkdtemp()
  atexit.register(shutil.rmtree, tmp, ignore_errors=True)
  paths = dict(tmp=tmp, data=helpers.make_corpus(os.path.join(tmp, 'data')),
               text=os.path.join(tmp, 'text_run'), nca=os.path.join(tmp, 'nca_run'))
  text_data = [f'--config.data.text.path={paths["data"]}']
  for workdir, variant, extra in ((paths['text'], 'text', text_data), (paths['nca'], '', [])):
    code, out = helpers.run_main(workdir, variant, extra)
    assert code == 0, out[-3000:]
  return paths


def command(module, *args: str) -> str:
  """What `python -m ncalm.MODULE ARGS` prints (run in this process)."""
  argv = [module.__name__, *args]
  fv = flags.FlagValues()
  module.define_flags(fv, argv)
  rest = fv(argv)
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    module.main(rest, fv)
  return out.getvalue()


def sample_command(*args: str) -> str:
  return command(sample, *args)


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
    runs = tiny_runs()
    cls.tmp, cls.workdir = runs['tmp'], runs['text']
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
    runs = tiny_runs()
    cls.tmp, cls.workdir = runs['tmp'], runs['nca']

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



def logged_evals(workdir: str, step: int) -> dict[str, float]:
  """The evaluation scalars the training loop logged at `step`."""
  with open(os.path.join(workdir, run_files.METRICS)) as f:
    rows = [json.loads(line) for line in f]
  return {k: v for r in rows if r['step'] == step for k, v in r.items()
          if k.split('/')[0] in ('eval', 'probe', 'induction')}


def files_outside_eval(workdir: str) -> dict[str, float]:
  return {os.path.join(root, n): os.path.getmtime(os.path.join(root, n))
          for root, _, names in os.walk(workdir) for n in names
          if not os.path.relpath(root, workdir).startswith(run_files.EVAL)}


class EvaluateTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.runs = tiny_runs()

  def test_nca_run_same_numbers_as_the_loop_and_only_eval_written(self):
    workdir = self.runs['nca']
    before = files_outside_eval(workdir)
    for step in (3, 6):
      out = command(evaluate, f'--workdir={workdir}', f'--step={step}')
      with open(os.path.join(reports.out_dir(workdir, step), reports.REPORT)) as f:
        report = json.load(f)
      self.assertEqual(report['scalars'], logged_evals(workdir, step))
      self.assertEqual(report['evals'], ['heldout', 'probe'])
      self.assertIn(f'eval/loss {report["scalars"]["eval/loss"]:.6g}'.replace(' ', ''),
                    out.replace(' ', ''))
      picture = os.path.join(reports.out_dir(workdir, step), report['pictures'][0])
      self.assertTrue(os.path.getsize(picture))
    self.assertEqual(files_outside_eval(workdir), before)

  def test_the_loops_final_evaluation_is_kept_and_reused(self):
    workdir = os.path.join(self.runs['tmp'], 'nca_final')
    shutil.copytree(self.runs['nca'], workdir, ignore=shutil.ignore_patterns('eval'))
    self.assertFalse(os.path.exists(reports.out_dir(workdir, 6)))
    shutil.copytree(os.path.join(self.runs['nca'], 'eval', '6', 'items'),
                    os.path.join(workdir, 'eval', '6', 'items'))  # as the loop left them
    with mock.patch.object(heldout.HeldoutLoss, 'run', side_effect=AssertionError('rerun')), \
         mock.patch.object(nca_probe.NextFrameProbe, 'run', side_effect=AssertionError('rerun')):
      report = evaluate.evaluate(workdir, 6)
    self.assertEqual(report['scalars'], logged_evals(self.runs['nca'], 6))

  def test_text_run_moved_dataset_and_limit(self):
    workdir, data = self.runs['text'], self.runs['data']
    moved = data + '_moved'
    shutil.copytree(data, moved)
    self.addCleanup(shutil.rmtree, moved, ignore_errors=True)
    report = evaluate.evaluate(workdir, 6, overrides={'data.text.path': moved})
    self.assertEqual(report['scalars'], logged_evals(workdir, 6))
    limited = evaluate.evaluate(workdir, 6, ['heldout'], limit=1,
                                overrides={'data.text.path': moved})
    self.assertNotEqual(limited['scalars']['eval/loss'], report['scalars']['eval/loss'])
    with open(os.path.join(reports.out_dir(workdir, 6), reports.REPORT)) as f:
      self.assertEqual(json.load(f)['scalars'], report['scalars'])   # the whole one is kept
    self.assertTrue(os.path.exists(os.path.join(reports.out_dir(workdir, 6, 1), reports.REPORT)))
    missing = os.path.join(self.runs['tmp'], 'nowhere')
    with self.assertRaisesRegex(errors.UserError, 'nowhere.*--config.data.text.path=DIR'):
      evaluate.evaluate(workdir, 6, overrides={'data.text.path': missing})

  def test_an_interrupted_evaluation_resumes_from_finished_items(self):
    workdir = os.path.join(self.runs['tmp'], 'nca_copy')
    shutil.copytree(self.runs['nca'], workdir, ignore=shutil.ignore_patterns('eval'))
    with mock.patch.object(nca_probe.NextFrameProbe, 'run', side_effect=KeyboardInterrupt):
      with self.assertRaises(KeyboardInterrupt):
        evaluate.evaluate(workdir, 6)
    folder = reports.out_dir(workdir, 6)
    self.assertFalse(os.path.exists(os.path.join(folder, reports.REPORT)))
    self.assertTrue(os.path.exists(os.path.join(folder, reports.ITEMS_DIR, 'heldout.json')))
    with mock.patch.object(heldout.HeldoutLoss, 'run', side_effect=AssertionError('rerun')):
      report = evaluate.evaluate(workdir, 6)   # heldout is not run again
    self.assertEqual(report['scalars'], logged_evals(self.runs['nca'], 6))

  def test_bad_names_and_fields(self):
    workdir = self.runs['nca']
    with self.assertRaisesRegex(errors.UserError, "no evaluator 'nca_probe'; the evaluators "
                                'are heldout, probe, induction'):
      evaluate.evaluate(workdir, names=['nca_probe'])
    with self.assertRaisesRegex(errors.UserError, "'induction' does not suit"):
      evaluate.evaluate(workdir, names=['induction'])
    with self.assertRaisesRegex(errors.UserError, r'evals.induction.sequences=0\): give '
                                '--config.evals.induction.sequences=N'):
      evaluate.evaluate(self.runs['text'], names=['induction'])
    with self.assertRaisesRegex(errors.UserError, '--config.seed cannot be changed'):
      command(evaluate, f'--workdir={workdir}', '--config.seed=3')
    with self.assertRaisesRegex(errors.UserError, r'--step=4: .* has checkpoints of steps '
                                r'\[3, 6\]'):
      evaluate.evaluate(workdir, 4)
    os.rename(os.path.join(workdir, run_files.RULE_BANK), workdir + '.bank')
    try:
      with self.assertRaisesRegex(errors.UserError, 'rule_bank.npz is missing'):
        evaluate.evaluate(workdir)
    finally:
      os.rename(workdir + '.bank', os.path.join(workdir, run_files.RULE_BANK))


if __name__ == '__main__':
  absltest.main()
