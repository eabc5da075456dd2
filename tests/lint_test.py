"""The code passes the project's lint: `ruff check .` with the rules in pyproject.toml (line
length 100, unused names, imports one per line and sorted in Google style). Run it yourself
with `ruff check .`; `ruff check . --fix` sorts imports."""
import os
import subprocess
import sys

from absl.testing import absltest

import helpers


class LintTest(absltest.TestCase):

  def test_ruff_finds_nothing(self):
    result = subprocess.run([sys.executable, '-m', 'ruff', 'check', '--no-cache', '.'],
                            cwd=helpers.REPO, capture_output=True, text=True, timeout=120,
                            check=False)
    self.assertNotIn('No module named ruff', result.stderr,
                     'ruff is not installed: pip install -e ".[test]"')
    self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

  def test_the_lint_sees_every_folder_of_code(self):
    """The check above covers the package, tests, configs, benchmarks and experiments."""
    result = subprocess.run([sys.executable, '-m', 'ruff', 'check', '--no-cache',
                             '--show-files', '.'], cwd=helpers.REPO, capture_output=True,
                            text=True, timeout=120, check=False)
    seen = {os.path.relpath(line.strip(), helpers.REPO).split(os.sep)[0]
            for line in result.stdout.splitlines() if line.strip().endswith('.py')}
    self.assertContainsSubset({'ncalm', 'tests', 'configs', 'benchmarks', 'experiments'}, seen)


if __name__ == '__main__':
  absltest.main()
