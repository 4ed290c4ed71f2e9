"""setup.py ships the data folders (bundled pool, judge prompts, lm-eval task files) as declared packages."""
import subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_build_ships_assets_without_warning(tmp_path):
    res = subprocess.run([sys.executable, 'setup.py', '-q', 'build_py', '--build-lib', str(tmp_path / 'lib')],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert 'absent from' not in res.stderr, res.stderr[-2000:]   # setuptools: "Package ... is absent from `packages`"
    lib = tmp_path / 'lib' / 'llm_curate'
    for f in ('assets/t0_pool_5k.jsonl.gz', 'assets/judge_prompts/mt_bench_questions.jsonl',
              'assets/lm_eval_tasks/tydiqa_goldp_all.yaml', 'cli.py'):
        assert (lib / f).exists(), f
