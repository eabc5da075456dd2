"""The commands refuse bad input with one paragraph on stderr and exit code 2, no traceback.

Every case fails in the checks, before any sampling or compilation: each process costs
only its imports. They run concurrently, started once for the whole class.
"""
import os
import subprocess
import sys
import tempfile

from absl.testing import absltest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = '--config=configs/nca_164m.py'


class BadInputTest(absltest.TestCase):

  CASES = {
      # name: (module, flags, texts the message must contain)
      'generate_out': ('ncalm.generate', ['--out=x.txt'], ['--out', '.npz or .array_record']),
      'generate_band': ('ncalm.generate', ['--out={tmp}/x.npz', '--band=0.7,0.2'],
                        ['--band', '0 <= low < high <= 1']),
      'render_bands': ('ncalm.render', ['--out_dir={tmp}/pictures', '--bands=foo'],
                       ['--bands', "'foo'", "'low,high'"]),
      'dryrun_no_config_file': ('ncalm.dryrun', ['--config=/nonexistent.py'],
                                ['--config=/nonexistent.py', 'no such file']),
      'dryrun_typo_field': ('ncalm.dryrun', [CONFIG, '--config.modle.d_model=3'],
                            ['--config.modle.d_model=3', 'modle']),
      'dryrun_targets': ('ncalm.dryrun', [CONFIG, '--targets=bogus'],
                         ['--targets=bogus', 'v4-32']),
      'dryrun_mesh': ('ncalm.dryrun', [CONFIG, '--config.mesh.data=0'],
                      ['config.mesh.data=0', '-1']),
      'moved_field': ('ncalm.dryrun', [CONFIG, '--config.eval_every=5'],
                      ['--config.eval_every=5: eval_every is now evals.heldout.every and '
                       'evals.probe.every']),
      'typo_suggestion': ('ncalm.dryrun', [CONFIG, '--config.trian_steps=5'],
                          ["'trian_steps' Did you mean \"train_steps\""]),
      'help': ('ncalm.dryrun', ['--helpshort'], []),
  }

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp()
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get('JAX_PLATFORMS', 'cpu'))
    env.pop('TPU_LIBRARY_PATH', None)
    procs = {}
    for name, (module, args, _) in cls.CASES.items():
      argv = [sys.executable, '-m', module, *(a.format(tmp=cls.tmp) for a in args)]
      procs[name] = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
    cls.results = {}
    for name, proc in procs.items():
      out, err = proc.communicate(timeout=300)
      cls.results[name] = (proc.returncode, out, err)

  @classmethod
  def tearDownClass(cls):
    subprocess.run(['rm', '-rf', cls.tmp], check=False)
    super().tearDownClass()

  def check(self, name):
    module, _, texts = self.CASES[name]
    code, out, err = self.results[name]
    self.assertEqual(code, 2, err)
    self.assertNotIn('Traceback', err)
    self.assertEqual(out, '')   # refused before doing anything
    self.assertTrue(err.startswith(f'{module}: error: '), err)
    lines = err.rstrip('\n').split('\n')
    self.assertLessEqual(len(lines), 5, err)
    self.assertNotIn('', [line.strip() for line in lines], err)   # one paragraph
    squeezed = ''.join(err.split())   # wrapping may break a text at a space or a hyphen
    for text in texts:
      self.assertIn(''.join(text.split()), squeezed, err)

  def test_generate_out(self):
    self.check('generate_out')

  def test_generate_band(self):
    self.check('generate_band')
    self.assertFalse(os.path.exists(os.path.join(self.tmp, 'x.npz')))

  def test_render_bands(self):
    self.check('render_bands')
    self.assertFalse(os.path.exists(os.path.join(self.tmp, 'pictures')))

  def test_dryrun_no_config_file(self):
    self.check('dryrun_no_config_file')

  def test_dryrun_typo_field(self):
    self.check('dryrun_typo_field')

  def test_dryrun_targets(self):
    self.check('dryrun_targets')

  def test_dryrun_mesh(self):
    self.check('dryrun_mesh')

  def test_a_moved_field_on_the_command_line_names_its_new_home(self):
    self.check('moved_field')

  def test_a_typo_gets_the_suggestion_as_written(self):
    self.check('typo_suggestion')
    self.assertNotIn('\\n', self.results['typo_suggestion'][2])   # no repr escapes

  def test_help_is_not_an_error(self):
    code, out, _ = self.results['help']
    self.assertEqual(code, 0)
    self.assertIn('--targets', out)


if __name__ == '__main__':
  absltest.main()
