"""Every module imports in a clean interpreter (catches hidden notebook state), and the core stays light."""
import json, pkgutil, subprocess, sys

import pytest

import llm_curate

MODULES = sorted(m.name for m in pkgutil.iter_modules(llm_curate.__path__) if not m.name.startswith('_'))
HEAVY = ['torch', 'transformers', 'vllm', 'trl', 'peft', 'ray', 'lm_eval', 'sentence_transformers', 'matplotlib',
         'openai', 'datasets']


def clean_python(code: str) -> str:
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.parametrize('mod', MODULES)
def test_module_imports_cleanly_without_heavy_deps(mod):
    code = (f"import sys, json; import llm_curate.{mod}; "
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    loaded = json.loads(clean_python(code).strip().splitlines()[-1])
    assert loaded == [], f'llm_curate.{mod} imports {loaded} at module level; import them inside functions via need()'


def test_import_is_fast():
    code = "import time; t = time.perf_counter(); import llm_curate; print(time.perf_counter() - t)"
    best = min(float(clean_python(code)) for _ in range(3))
    assert best < 1.0, f'import llm_curate took {best:.2f} s'


def test_expected_modules_present():
    assert {'data', 'models', 'cli'} <= set(MODULES)
