"""Embeddings (llm_curate.embed) and the `embed` / `curate` commands end to end, offline with the bundled MiniLM."""
import json, os, subprocess, sys
import numpy as np
import pandas as pd
import pytest

from llm_curate.embed import embed_texts, EmbeddingCache, save_embeddings, load_embeddings, resolve_embed_model
from llm_curate.curate import CurationReport
from llm_curate.synthetic import make_noisy_scores

TEXTS = ['How do I sort a list in Python?', 'Use sorted() or list.sort() to sort a Python list.',
         'What is the capital of France?', 'Paris is the capital of France.', 'Write a haiku about rain.',
         'x' * 3000]


def test_offline_fallback_is_minilm():
    path, name = resolve_embed_model()
    assert name == 'sentence-transformers/all-MiniLM-L6-v2' and os.path.isdir(path)


def test_embed_unit_norm_float32_and_order(tmp_path):
    E = embed_texts(TEXTS, cache_dir=tmp_path, progress=False)
    assert E.dtype == np.float32 and E.shape == (6, 384)
    np.testing.assert_allclose(np.linalg.norm(E, axis=1), 1, atol=1e-5)
    E2 = embed_texts(TEXTS[::-1], cache_dir=False, progress=False)   # no cache: computed again, reversed order
    np.testing.assert_allclose(E2[::-1], E, atol=1e-5)


def test_cache_embeds_nothing_twice(tmp_path, monkeypatch):
    import llm_curate.embed as emb
    calls = []
    real = emb.load_embedder
    def spy(path, device=None, backend='torch'):
        m = real(path, device, backend)
        class Wrap:
            def __getattr__(self, a): return getattr(m, a)
            def __setattr__(self, a, v): setattr(m, a, v)
            def encode(self, texts, **kw):
                calls.append(len(texts)); return m.encode(texts, **kw)
        return Wrap()
    monkeypatch.setattr(emb, 'load_embedder', spy)
    ids = [f'id{i}' for i in range(len(TEXTS))]
    A = embed_texts(TEXTS[:4], ids=ids[:4], cache_dir=tmp_path, progress=False)
    B = embed_texts(TEXTS, ids=ids, cache_dir=tmp_path, progress=False)       # only the 2 new ones are embedded
    C = embed_texts(TEXTS, ids=ids, cache_dir=tmp_path, progress=False)       # nothing embedded
    assert calls == [4, 2]
    np.testing.assert_array_equal(A, B[:4]); np.testing.assert_array_equal(B, C)
    assert len(list(tmp_path.glob('*/shard-*.npy'))) == 2


def test_duplicate_texts_embedded_once(tmp_path):
    E = embed_texts([TEXTS[0], TEXTS[1], TEXTS[0]], cache_dir=tmp_path, progress=False)
    np.testing.assert_array_equal(E[0], E[2])


def test_bad_inputs():
    with pytest.raises(TypeError, match='render_conversation'):
        embed_texts(['a', None], progress=False)
    with pytest.raises(ValueError, match='one id per text'):
        embed_texts(['a', 'b'], ids=['1'], progress=False)
    with pytest.raises(ValueError, match="'batch_size' parameter"):
        embed_texts(['a'], batch_size=0, progress=False)


def test_embeddings_folder_roundtrip(tmp_path):
    X = np.eye(3, 4, dtype=np.float32)
    save_embeddings(tmp_path, X, ['a', 'b', 'c'], 'm', source='x.jsonl')
    X2, ids, meta = load_embeddings(tmp_path)
    np.testing.assert_array_equal(X, X2)
    assert ids == ['a', 'b', 'c'] and meta['model'] == 'm' and meta['source'] == 'x.jsonl' and meta['normalized']
    with pytest.raises(FileNotFoundError, match='llm_curate embed'):
        load_embeddings(tmp_path / 'nope')


def run(*args):
    env = {**os.environ, 'HF_HUB_OFFLINE': '1'}
    return subprocess.run([sys.executable, '-c', 'import sys; from llm_curate.cli import main; sys.exit(main(sys.argv[1:]))', *args], capture_output=True, text=True, env=env, timeout=300)


def test_cli_embed_then_curate(tmp_path):
    # data: 60 short conversations in 3 topics; ratings with statuses
    topics = {'python': 'How do I {} a list in Python?', 'cooking': 'How long should I {} pasta?', 'travel': 'What to {} in Paris?'}
    verbs = ['sort', 'reverse', 'copy', 'cook', 'boil', 'salt', 'see', 'eat', 'visit', 'find', 'filter', 'print',
             'drain', 'serve', 'book', 'buy', 'clear', 'merge', 'plan', 'store']
    rows = []
    for t, q in topics.items():
        for v in verbs:
            rows.append({'messages': [{'role': 'user', 'content': q.format(v)}, {'role': 'assistant', 'content': f'To {v}: ... ({t})'}]})
    data = tmp_path / 'data.jsonl'
    data.write_text('\n'.join(json.dumps(r) for r in rows))
    r = run('embed', str(data), '--out', str(tmp_path / 'emb'), '--cache-dir', str(tmp_path / 'cache'), '-q')
    assert r.returncode == 0, r.stderr
    X, ids, meta = load_embeddings(tmp_path / 'emb')
    from llm_curate.embed import backend_name, resolve_backend
    saved_as = backend_name('all-MiniLM-L6-v2', resolve_backend(None))      # the name says which precision made the rows
    assert X.shape == (60, 384) and len(set(ids)) == 60 and meta['model'].endswith(saved_as)
    rng = np.random.default_rng(0)
    status = ['ok'] * 55 + ['unparsed'] * 3 + ['failed'] * 2
    tab = pd.DataFrame({'id': ids, 'rater': 'r1', 'status': status,
                        'score': pd.Series(rng.integers(0, 6, 60)).astype('Int64').where(pd.Series(status) == 'ok'),
                        'score_probs': [list(rng.dirichlet(np.ones(10))) if s == 'ok' else None for s in status]})
    tab2 = tab.assign(rater='r2')
    pd.concat([tab, tab2]).to_parquet(tmp_path / 'ratings.parquet')
    r = run('curate', '--scores', str(tmp_path / 'ratings.parquet'), '--embeddings', str(tmp_path / 'emb'),
            '--out', str(tmp_path / 'rep'), '--k', '5')
    assert r.returncode == 0, r.stderr
    for rater in ('r1', 'r2'):
        rep = CurationReport.load(tmp_path / 'rep' / rater)
        assert len(rep.frame) == 55 and set(rep.frame.id) == set(ids[:55])
        assert rep.params['ratings']['excluded'] == {'unparsed': 3, 'failed': 2}
        assert rep.params['embedding_model'].endswith(saved_as) and rep.params['rater'] == rater
    assert 'excluded: 3 unparsed, 2 failed' in r.stdout
    r = run('curate', '--scores', str(tmp_path / 'ratings.parquet'), '--embeddings', str(tmp_path / 'emb'),
            '--out', str(tmp_path / 'rep1'), '--rater', 'r2', '--k', '5', '--soft', '--plots')
    assert r.returncode == 0, r.stderr
    rep = CurationReport.load(tmp_path / 'rep1')
    assert rep.params['soft_scores'] and (tmp_path / 'rep1' / 'curation.png').stat().st_size < 300_000


def test_cli_curate_errors(tmp_path):
    X, y, rated = make_noisy_scores(100, n_clusters=10, seed=0)
    save_embeddings(tmp_path / 'emb', X, [f's{i}' for i in range(100)], 'gen')
    pd.DataFrame({'id': ['zzz'] + [f's{i}' for i in range(1, 100)], 'score': rated}).to_parquet(tmp_path / 'r.parquet')
    r = run('curate', '--scores', str(tmp_path / 'r.parquet'), '--embeddings', str(tmp_path / 'emb'), '--out', str(tmp_path / 'o'))
    assert r.returncode != 0 and 'have no embedding' in r.stderr
    r = run('curate', '--scores', str(tmp_path / 'missing.parquet'), '--embeddings', str(tmp_path / 'emb'), '--out', str(tmp_path / 'o'))
    assert r.returncode != 0 and 'missing.parquet: no such file; expected the rating table' in r.stderr


def test_offline_fallback_is_one_info_line(caplog, monkeypatch):
    "Offline, the bundled MiniLM is the default: said once, at INFO, never as a warning."
    import logging
    from llm_curate import embed
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setattr(embed, '_FALLBACK_LOGGED', [])
    monkeypatch.setattr(embed, '_in_hf_cache', lambda repo: False)
    with caplog.at_level(logging.INFO, logger='llm_curate.embed'):
        for _ in range(3): embed.resolve_embed_model(None)
    recs = [r for r in caplog.records if r.name == 'llm_curate.embed']
    assert [r.levelname for r in recs] == ['INFO'], [(r.levelname, r.getMessage()) for r in recs]
    assert 'bundled all-MiniLM-L6-v2' in recs[0].getMessage()


def test_onnx_backend_rows_cached_apart(tmp_path):
    "The int8 backend's rows are close to PyTorch's, and cached under their own name (never mixed)."
    from llm_curate.embed import embed_texts
    texts = ['How do I sort a list in Python?', 'Paris is the capital of France.', 'Write a haiku about rain.']
    A = embed_texts(texts, backend='torch', cache_dir=tmp_path, progress=False)
    B = embed_texts(texts, backend='onnx-int8', cache_dir=tmp_path, progress=False)
    assert (A * B).sum(1).min() > 0.97 and not np.array_equal(A, B)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['sentence-transformers__all-MiniLM-L6-v2',
                                                          'sentence-transformers__all-MiniLM-L6-v2__onnx-int8']


def test_bf16_backend_close_batch_independent_cached_apart(tmp_path):
    "bfloat16 autocast rows: close to float32 but computed in bfloat16, the same alone as in a batch, cached under their own name."
    from llm_curate.embed import embed_texts, resolve_backend, native_bf16
    texts = ['How do I sort a list in Python?', 'Paris is the capital of France.', 'Write a haiku about rain on a tin roof at night.']
    A = embed_texts(texts, backend='torch', cache_dir=tmp_path, progress=False)
    B = embed_texts(texts, backend='torch-bf16', cache_dir=tmp_path, progress=False)
    assert (A * B).sum(1).min() > 0.999 and np.abs(A - B).max() > 1e-4     # really bfloat16, and still the same direction
    alone = np.stack([embed_texts([t], backend='torch-bf16', cache_dir=False, progress=False)[0] for t in texts])
    assert (alone * B).sum(1).min() > 0.9999                               # a row does not depend on its batch
    assert sorted(p.name for p in tmp_path.iterdir()) == ['sentence-transformers__all-MiniLM-L6-v2',
                                                          'sentence-transformers__all-MiniLM-L6-v2__torch-bf16']
    assert resolve_backend(None, 'cpu') == ('torch-bf16' if native_bf16() else 'torch')
    assert resolve_backend(None, 'cuda:0') == 'torch' and resolve_backend(None, ['cpu', 'cpu']) == 'torch'
