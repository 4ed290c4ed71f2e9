"""Loading every chat format, and every kind of bad input, from files the tests write."""
import gzip, json, os
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from llm_curate.data import (DataError, FORMATS, load_samples, save_samples, sample_id, render_conversation,
                             to_messages, iter_records)

REAL = {  # real-looking records, one list per format
    'messages': [{'messages': [{'role': 'system', 'content': 'You are helpful.'},
                               {'role': 'user', 'content': f'What is {i} + {i}?'},
                               {'role': 'assistant', 'content': f'{i} + {i} = {2 * i}.'}], 'source': 'flan_v2'}
                 for i in range(10)],
    'sharegpt': [{'id': f'sg{i}', 'conversations': [{'from': 'human', 'value': f'Tell me fact #{i} about owls.'},
                                                    {'from': 'gpt', 'value': f'Owl fact {i}: they can rotate their heads.'},
                                                    {'from': 'human', 'value': 'More?'},
                                                    {'from': 'gpt', 'value': 'They fly silently.'}]} for i in range(10)],
    'alpaca': [{'instruction': f'Rewrite sentence {i} in the passive voice.', 'input': f'The cat chased mouse {i}.',
                'output': f'Mouse {i} was chased by the cat.'} for i in range(10)],
    'dolly': [{'instruction': f'Who founded company {i}?', 'context': f'Company {i} was founded by Ada in 19{i}0.',
               'response': 'Ada.', 'category': 'closed_qa'} for i in range(10)],
    'prompt_completion': [{'prompt': f'Review {i}: great phone. Sentiment?', 'completion': 'positive',
                           'template': 'amazon_polarity_t1'} for i in range(10)],
    'prompt_response': [{'prompt': f'Is {i} even?', 'response': 'yes' if i % 2 == 0 else 'no'} for i in range(10)],
}


def write(path: Path, records, kind=None):
    kind = kind or path.suffix
    if kind == '.jsonl': path.write_text('\n'.join(json.dumps(r) for r in records) + '\n')
    elif kind == '.json': path.write_text(json.dumps(records, indent=1))
    elif kind == '.parquet':
        import pandas as pd
        pd.DataFrame(records).to_parquet(path)
    elif kind == '.csv':
        import pandas as pd
        pd.DataFrame(records).to_csv(path, index=False)
    return path


@pytest.mark.parametrize('fmt', list(FORMATS))
@pytest.mark.parametrize('ext', ['.jsonl', '.json', '.parquet', '.csv'])
def test_every_format_and_file_type(tmp_path, fmt, ext):
    if ext == '.csv' and fmt in ('messages', 'sharegpt'): pytest.skip('nested conversations do not fit CSV')
    path = write(tmp_path / f'{fmt}{ext}', REAL[fmt])
    ds, stats = load_samples(path, progress=False, return_stats=True)
    assert len(ds) == 10 and stats.formats == {fmt: 10} and stats.duplicates == 0
    assert ds.column_names[:3] == ['id', 'messages', 'source']
    for m in ds['messages']:
        assert m[-1]['role'] == 'assistant' and all(x['content'] for x in m)
    assert ds['id'] == [sample_id(m) for m in ds['messages']]


def test_format_override_and_alias(tmp_path):
    path = write(tmp_path / 'x.jsonl', REAL['messages'])
    assert len(load_samples(path, format='tulu', progress=False)) == 10
    with pytest.raises(DataError, match="field 'instruction' is missing"):
        load_samples(path, format='alpaca', progress=False)
    with pytest.raises(ValueError, match='Unknown format'):
        load_samples(path, format='yaml', progress=False)


def test_id_field_source_and_original_columns(tmp_path):
    path = write(tmp_path / 'sg.jsonl', REAL['sharegpt'])
    ds = load_samples(path, id_field='id', progress=False)
    assert ds['id'] == [f'sg{i}' for i in range(10)]
    assert ds['source'] == ['sg'] * 10
    assert json.loads(ds[0]['conversations'])[0]['from'] == 'human'  # original nested field kept as JSON text
    ds = load_samples(path, progress=False)
    assert ds['original_id'] == [f'sg{i}' for i in range(10)]


def test_gzip_and_folder(tmp_path):
    (tmp_path / 'pool').mkdir()
    with gzip.open(tmp_path / 'pool' / 'a.jsonl.gz', 'wt') as f:
        f.write('\n'.join(json.dumps(r) for r in REAL['alpaca']))
    write(tmp_path / 'pool' / 'b.json', REAL['dolly'])
    (tmp_path / 'pool' / 'notes.txt').write_text('ignored')
    ds, stats = load_samples(tmp_path / 'pool', progress=False, return_stats=True)
    assert len(ds) == 20 and stats.formats == {'alpaca': 10, 'dolly': 10}
    assert set(ds['source']) == {'a', 'b'}


def test_cache_reuse_and_invalidation(tmp_path):
    path = write(tmp_path / 'x.jsonl', REAL['alpaca'])
    a = load_samples(path, progress=False)
    b = load_samples(path, progress=False)
    assert a.cache_files == b.cache_files
    write(path, REAL['alpaca'][:5])
    assert len(load_samples(path, progress=False)) == 5


# --- bad input: a 10-line file per case -------------------------------------------------------

def ten_lines(tmp_path, bad_line: str, at: int = 6, name='bad.jsonl'):
    lines = [json.dumps(r) for r in REAL['alpaca']]
    lines[at - 1] = bad_line
    p = tmp_path / name
    p.write_bytes(('\n'.join(lines) + '\n').encode('utf-8') if isinstance(bad_line, str) else b'')
    return p


def assert_no_leftovers():
    cache = Path(os.environ['LLM_CURATE_CACHE']) / 'samples'
    if cache.exists():
        assert not [p for p in cache.iterdir() if p.name.startswith('.') or p.suffix == '.tmp'], list(cache.iterdir())


@pytest.mark.parametrize('bad_line, kind, message', [
    ('{"instruction": "x", "output": ', 'invalid_json', ':6: not valid JSON'),
    (json.dumps({'text': 'hello', 'label': 1}), 'missing_field', ":6: field 'instruction' is missing"),
    (json.dumps({'instruction': 'x', 'input': '', 'output': ''}), 'empty_message', ':6: message 1 (assistant) is empty'),
    (json.dumps({'instruction': 'x', 'input': '', 'output': 42}), 'non_string_content', 'content must be a string, got int'),
    (json.dumps({'instruction': None, 'input': '', 'output': 'y'}), 'non_string_content', 'content must be a string, got NoneType'),
])
def test_bad_record(tmp_path, bad_line, kind, message):
    p = ten_lines(tmp_path, bad_line)
    with pytest.raises(DataError, match=message.replace('(', r'\(').replace(')', r'\)')) as e:
        load_samples(p, progress=False)
    assert str(p) in str(e.value) and "on_error='skip'" in str(e.value)
    assert_no_leftovers()
    ds, stats = load_samples(p, progress=False, on_error='skip', return_stats=True)
    assert len(ds) == 9 and stats.skipped == {kind: 1}


def test_no_format_lists_keys_and_formats(tmp_path):
    p = tmp_path / 'odd.jsonl'
    p.write_text('\n'.join(json.dumps({'question': f'q{i}', 'answer': f'a{i}'}) for i in range(10)))
    with pytest.raises(DataError) as e:
        load_samples(p, progress=False)
    msg = str(e.value)
    assert f'{p}:1' in msg and "'question', 'answer'" in msg
    assert all(f in msg for f in FORMATS)


def test_no_assistant_turn(tmp_path):
    recs = REAL['messages'][:9] + [{'messages': [{'role': 'user', 'content': 'Anyone there?'}]}]
    p = write(tmp_path / 'conv.jsonl', recs)
    with pytest.raises(DataError, match=':10: the conversation has no assistant turn'):
        load_samples(p, progress=False)


def test_non_utf8(tmp_path):
    lines = [json.dumps(r).encode() for r in REAL['alpaca']]
    lines[3] = '{"instruction": "caf\u00e9", "input": "", "output": "ok"}'.encode('latin-1')
    p = tmp_path / 'latin.jsonl'
    p.write_bytes(b'\n'.join(lines))
    with pytest.raises(DataError, match=r'latin.jsonl:4: not valid UTF-8 \(byte 0xe9'):
        load_samples(p, progress=False)
    assert len(load_samples(p, progress=False, on_error='skip')) == 9
    pj = tmp_path / 'latin.json'
    pj.write_bytes(b'[\n' + b',\n'.join(lines) + b'\n]')
    with pytest.raises(DataError, match=r'latin.json:5: not valid UTF-8'):
        load_samples(pj, progress=False)


def test_duplicates_kept_once_and_counted(tmp_path):
    recs = REAL['alpaca'][:7] + REAL['alpaca'][:3]
    p = write(tmp_path / 'dup.jsonl', recs)
    ds, stats = load_samples(p, progress=False, return_stats=True)
    assert (len(ds), stats.duplicates, stats.records) == (7, 3, 10)
    assert len(set(ds['id'])) == 7


def test_empty_file_and_missing_file(tmp_path):
    p = tmp_path / 'empty.jsonl'
    p.write_text('')
    with pytest.raises(DataError, match='the file is empty'):
        load_samples(p, progress=False)
    (tmp_path / 'blank.json').write_text('[]')
    with pytest.raises(DataError, match='the file is empty'):
        load_samples(tmp_path / 'blank.json', progress=False)
    with pytest.raises(FileNotFoundError, match='no such file'):
        load_samples(tmp_path / 'nope.jsonl', progress=False)
    assert_no_leftovers()


def test_hub_name_unreachable_is_clear():
    with pytest.raises(FileNotFoundError, match='not a local file or folder, and loading it from the Hugging Face Hub failed'):
        load_samples('some-org/some-dataset-that-is-not-here', progress=False)


def test_save_is_atomic(tmp_path, monkeypatch):
    ds = load_samples(write(tmp_path / 'a.jsonl', REAL['alpaca']), progress=False)
    out = tmp_path / 'out.jsonl'
    save_samples(ds, out)
    before = out.read_bytes()
    import json as _json
    calls = {'n': 0}
    real_dumps = _json.dumps
    def flaky(*a, **k):
        calls['n'] += 1
        if calls['n'] > 3: raise OSError('disk full')
        return real_dumps(*a, **k)
    monkeypatch.setattr('llm_curate.data.json.dumps', flaky)
    with pytest.raises(OSError, match='disk full'):
        save_samples(ds, out)
    monkeypatch.undo()
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ['a.jsonl', 'out.jsonl']


# --- properties ----------------------------------------------------------------------------------

texts = st.text(min_size=1, max_size=40).filter(lambda s: s.strip())


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(texts, texts), min_size=1, max_size=4))
def test_roundtrip_property(turns):
    msgs = [m for q, a in turns for m in ({'role': 'user', 'content': q}, {'role': 'assistant', 'content': a})]
    assert to_messages({'messages': msgs}, 'messages') == msgs
    assert sample_id(msgs) == sample_id(json.loads(json.dumps(msgs)))
    r = render_conversation(msgs)
    assert r.count('### ') >= len(msgs) and r.startswith('### user: ')


def test_iter_records_locations(tmp_path):
    p = write(tmp_path / 'x.csv', REAL['alpaca'][:3])
    assert [loc.split(': ')[-1] for loc, _ in iter_records(p)] == ['row 1', 'row 2', 'row 3']


@pytest.mark.parametrize('umask', [0o022, 0o002, 0o077])
def test_atomic_write_follows_umask(tmp_path, umask):
    "Artifacts get the permissions the umask gives any new file (mkstemp alone would leave them 0600)."
    from llm_curate.data import atomic_write
    old = os.umask(umask)
    try:
        with atomic_write(tmp_path / 'a.json') as f: f.write('{}')
        with atomic_write(tmp_path / 'b.npy', 'wb') as f: f.write(b'x')
    finally: os.umask(old)
    for n in ('a.json', 'b.npy'): assert (tmp_path / n).stat().st_mode & 0o777 == 0o666 & ~umask, n
