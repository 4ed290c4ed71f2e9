"""llm_curate.judge: prompt sets, strict verdicts, both orders, rates and bootstrap intervals, answer generation."""
import json, os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from llm_curate import judge as J

SHARED = Path(__file__).resolve().parents[2] / 'shared' / 'data'
LIMA_TEST = SHARED / 'eval' / 'judge_sets' / 'lima_test_set.jsonl'


def test_shipped_prompt_sets():
    vic, mtb = J.load_prompt_set('vicuna'), J.load_prompt_set('mt_bench')
    assert (len(vic), len(mtb)) == (80, 80)
    assert all(len(p['turns']) == 1 for p in vic) and all(len(p['turns']) == 2 for p in mtb)
    assert sum('reference' in p for p in mtb) > 0
    assert len({p['id'] for p in vic}) == 80
    assert J.load_prompt_set('mt_bench', limit=3) == mtb[:3]
    # shipped with attribution, as package data
    readme = Path(J.__file__).parent / 'assets' / 'judge_prompts' / 'README.md'
    assert 'Apache License 2.0' in readme.read_text() and 'FastChat' in readme.read_text()


@pytest.mark.skipif(not LIMA_TEST.exists(), reason='shared data folder not present')
def test_lima_test_set_from_path():
    lima = J.load_prompt_set(LIMA_TEST)
    assert len(lima) == 300 and all(len(p['turns']) == 1 and p['turns'][0].strip() for p in lima)


def test_bad_prompt_files(tmp_path):
    f = tmp_path / 'p.jsonl'
    f.write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(ValueError, match=r'p.jsonl:2: not valid JSON'): J.load_prompt_set(f)
    f.write_text('{"answer": "no prompt here"}\n')
    with pytest.raises(ValueError, match="line 1 has no prompt"): J.load_prompt_set(f)
    f.write_text('{"turns": []}\n')
    with pytest.raises(ValueError, match="non-empty list"): J.load_prompt_set(f)
    f.write_text('{"instruction": "Sum", "input": "1 2", "output": "3"}\n')
    assert J.load_prompt_set(f)[0]['turns'] == ['Sum\n\n1 2']
    with pytest.raises(FileNotFoundError, match='neither a shipped set'): J.load_prompt_set(tmp_path / 'nope.jsonl')


@pytest.mark.parametrize('text, verdict', [
    ('[[A]]', 'A'), ('reasoning...\nFinal verdict: [[B]]', 'B'), ('[[C]]', 'C'), ('[[ A ]]', 'A'),
    ('[[A]] [[A]]', 'A'), ('[[A]] ... no wait [[B]]', None), ('A is better', None), ('[A]', None), ('[[D]]', None),
    ('', None), (None, None)])
def test_parse_verdict_strict(text, verdict):
    assert J.parse_verdict(text) == verdict


V = st.sampled_from(['A', 'B', 'C', None])


@given(V, V)
def test_pair_outcome_swap_symmetry(v1, v2):
    "Swapping which model is A turns a win into a loss: outcome(B vs A) mirrors outcome(A vs B)."
    swap = {'A': 'B', 'B': 'A', 'C': 'C', None: None}
    o, o_swapped = J.pair_outcome(v1, v2), J.pair_outcome(swap[v1], swap[v2])
    mirror = {'win': 'lose', 'lose': 'win', 'tie': 'tie', None: None}
    assert o_swapped == mirror[o]
    if v1 and v2 and {v1, v2} == {'A', 'B'} and v1 == v2: assert o == 'tie'


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from(['win', 'tie', 'lose']), min_size=1, max_size=80), st.integers(0, 10))
def test_bootstrap_intervals_bracket_the_rates(outcomes, seed):
    ci = J.bootstrap_rates(outcomes, n_boot=300, seed=seed)
    for o in J.OUTCOMES:
        r = outcomes.count(o) / len(outcomes)
        lo, hi = ci[o]
        assert 0 <= lo <= hi <= 1 and lo - 1e-12 <= r <= hi + 1e-12
    assert ci == J.bootstrap_rates(outcomes, n_boot=300, seed=seed)


def test_bootstrap_width_shrinks_with_n():
    small = J.bootstrap_rates(['win', 'lose'] * 10, seed=0)['win']
    big = J.bootstrap_rates(['win', 'lose'] * 500, seed=0)['win']
    assert (big[1] - big[0]) < (small[1] - small[0]) / 4
    assert big[0] < 0.5 < big[1]


def test_judge_pairwise_bad_inputs():
    class NoChat: pass
    with pytest.raises(TypeError, match='chat'): J.judge_pairwise(['p'], ['a'], ['b'], NoChat())
    class Short:
        def chat(self, convs, max_tokens=1, temperature=0.0): return ['[[A]]']
    with pytest.raises(RuntimeError, match='returned 1 replies for 2'): J.judge_pairwise(['p'], ['a'], ['b'], Short())
    with pytest.raises(ValueError, match="'unparsed' parameter"): J.judge_pairwise(['p'], ['a'], ['b'], Short(), unparsed='x')


@pytest.fixture(scope='module')
def smollm2():
    pytest.importorskip('transformers'); pytest.importorskip('gguf')
    from llm_curate.models import load_causal_lm
    try: return load_causal_lm('smollm2')
    except (ImportError, FileNotFoundError) as e: pytest.skip(f'SmolLM2 not available: {e}')


def test_generate_answers_transformers(smollm2):
    vic, mtb = J.load_prompt_set('vicuna'), J.load_prompt_set('mt_bench')
    prompts = ['What is 2+2?', vic[0], mtb[0]]
    ans = J.generate_answers(smollm2, prompts, backend='transformers', max_new_tokens=12, batch_size=3, progress=False)
    assert isinstance(ans[0], str) and isinstance(ans[1], list) and len(ans[2]) == 2
    assert all(a.strip() for a in [ans[0], *ans[1], *ans[2]])
    # left padding + greedy: a batched answer equals the same prompt answered alone
    alone = J.generate_answers(smollm2, ['What is 2+2?'], backend='transformers', max_new_tokens=12, batch_size=1, progress=False)
    assert alone[0] == ans[0]
    with pytest.raises(ValueError, match="'backend' parameter"): J.generate_answers(smollm2, ['x'], backend='tgi')
