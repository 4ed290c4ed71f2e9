"""The `llm_curate` console script, run as a user would."""
import json, subprocess, sys
from pathlib import Path

import llm_curate

ASSET = Path(llm_curate.__file__).parent / 'assets' / 't0_pool_5k.jsonl.gz'


def run(*args, **kw):
    return subprocess.run(['llm_curate', *map(str, args)], capture_output=True, text=True, timeout=300, **kw)


def test_version_and_help():
    r = run('--version')
    assert r.returncode == 0 and r.stdout.strip() == f'llm_curate {llm_curate.__version__}'
    r = run('--help')
    assert r.returncode == 0 and 'convert' in r.stdout


def test_convert_bundled_pool(tmp_path):
    out = tmp_path / 'pool.parquet'
    r = run('convert', ASSET, out, '--cache-dir', tmp_path / 'cache')
    assert r.returncode == 0, r.stderr
    assert '5,000 samples from 5,000 records (prompt_completion: 5,000)' in r.stdout
    assert 'loading' in r.stderr  # the progress bar
    import pandas as pd
    df = pd.read_parquet(out)
    assert len(df) == 5000 and {'id', 'messages', 'source', 'template'} <= set(df.columns)
    assert df['template'].nunique() == 283


def test_convert_bad_input_exit_code_and_message(tmp_path):
    bad = tmp_path / 'bad.jsonl'
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c"\n')
    r = run('convert', bad, tmp_path / 'out.jsonl', '-q', '--cache-dir', tmp_path / 'cache')
    assert r.returncode == 1
    assert f'{bad}:2: not valid JSON' in r.stderr
    assert not (tmp_path / 'out.jsonl').exists()
    r = run('convert', bad, tmp_path / 'out.jsonl', '-q', '--on-error', 'skip', '--cache-dir', tmp_path / 'cache')
    assert r.returncode == 0 and 'skipped invalid_json: 1' in r.stdout
    assert [json.loads(l)['messages'][0]['content'] for l in (tmp_path / 'out.jsonl').read_text().splitlines()] == ['a']
