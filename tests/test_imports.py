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
    assert {'data', 'models', 'cli', 'synthetic', 'signals', 'select', 'curate', 'multi_rater'} <= set(MODULES)


def test_test_doubles_live_in_testing():
    "No runtime module defines a fake server: the scripted server and fake judge are in llm_curate.testing only."
    out = clean_python("import llm_curate.testing as t; print(t.ScriptedServer.__module__, t.fake_rating.__module__)")
    assert out.split() == ['llm_curate.testing', 'llm_curate.testing']
    import pathlib
    for f in pathlib.Path(llm_curate.__file__).parent.glob('*.py'):
        if f.name not in ('testing.py', '_modidx.py'):
            assert 'class ScriptedServer' not in f.read_text() and 'def fake_rating' not in f.read_text(), f.name


def test_rate_reexports_every_rating_name():
    "`from llm_curate.rate import X` keeps working for every public name of the rating rooms."
    code = ("import llm_curate.rate as R, llm_curate.rubric, llm_curate.parse, llm_curate.store, llm_curate.prices, "
            "llm_curate.openai_rate, llm_curate.rate_cli\n"
            "rooms = [llm_curate.rubric, llm_curate.parse, llm_curate.store, llm_curate.prices, llm_curate.openai_rate, llm_curate.rate_cli]\n"
            "miss = [n for m in rooms for n in m.__all__ if n != 'logger' and getattr(R, n) is not getattr(m, n)]\n"
            "print(miss)")
    assert clean_python(code).strip() == '[]'
