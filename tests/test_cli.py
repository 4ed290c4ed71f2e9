"""The `llm_curate` console script, run as a user would."""
import json, subprocess, sys
from pathlib import Path

import llm_curate, llm_curate.data

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


# --- the CLI speaks CLI: errors name options, usage is the subcommand's own ---

def cli_main(argv, capsys):
    "Run the CLI in-process; (exit code, stdout, stderr)."
    import pytest
    from llm_curate.cli import main
    try: code = main([str(a) for a in argv])
    except SystemExit as e: code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_bad_option_prints_the_subcommand_usage_with_a_hint(capsys):
    code, out, err = cli_main(['embed', 'pool.jsonl', '--out', 'emb', '--bach-size', '3'], capsys)
    assert code == 2
    assert err.startswith('usage: llm_curate embed') and 'unrecognized arguments: --bach-size 3' in err
    assert 'did you mean --batch-size?' in err
    code, out, err = cli_main(['run', 'cfg.yaml', '--dry-rn'], capsys)
    assert code == 2 and err.startswith('usage: llm_curate run') and 'did you mean --dry-run?' in err


def _small_config(tmp_path):
    cfg = tmp_path / 'cfg.json'
    cfg.write_text(json.dumps({'run_dir': str(tmp_path / 'run'), 'data': {'source': str(ASSET), 'limit': 20}}))
    return cfg


def test_run_force_takes_one_stage_and_keeps_config(tmp_path, capsys):
    cfg = _small_config(tmp_path)
    for force in (['--force', 'rate'], ['--force', 'rate', '--force', 'embed'], ['--force', 'rate,embed']):
        code, out, err = cli_main(['run', *force, cfg, '--dry-run'], capsys)   # CONFIG after --force is not taken as a stage
        assert code == 0, err
        assert out.startswith(f"plan for {tmp_path / 'run'}") and [l.split()[0] for l in out.splitlines()[1:3]] == ['data', 'rate']
    code, out, err = cli_main(['run', '--force', 'rat', cfg, '--dry-run'], capsys)
    assert code == 1 and "--force rat: no such stage (did you mean rate?)" in err and 'Traceback' not in err
    assert not (tmp_path / 'run').exists()


def test_run_help_lists_config_keys_and_example_is_a_valid_config(tmp_path, capsys):
    import yaml
    from llm_curate.pipeline import validate_config
    code, out, err = cli_main(['run', '--help'], capsys)
    assert code == 0 and 'config keys' in out and 'llm_curate run --example' in out
    for key in ('run_dir', 'max_sample_tokens', 'confidence', 'compare', 'base_model'): assert key in out, key
    code, out, err = cli_main(['run', '--example'], capsys)
    assert code == 0
    cfg = yaml.safe_load(out)
    cfg['data']['source'] = str(ASSET)            # the example's placeholder pool, pointed at a real file
    validate_config(cfg)                          # every key it shows is a real one, with a valid default
    code, out, err = cli_main(['run'], capsys)
    assert code == 1 and 'CONFIG is required' in err and '--example' in err


def test_demo_help_prints_percent_once(capsys):
    code, out, err = cli_main(['demo', '--help'], capsys)
    assert code == 0 and 'select 10% of the bundled' in ' '.join(out.split()) and '%%' not in out


def test_demo_default_folder_is_not_left_in_the_checkout(tmp_path):
    "`llm_curate demo` run from inside a git checkout leaves nothing untracked there; it writes under the cache."
    import os
    repo = tmp_path / 'checkout'; repo.mkdir()
    subprocess.run(['git', 'init', '-q', str(repo)], check=True)
    env = {**os.environ, 'LLM_CURATE_CACHE': str(tmp_path / 'cache')}
    models = Path(llm_curate.data.default_cache_dir()) / 'models'    # converted weights, shared (as in conftest)
    (tmp_path / 'cache').mkdir(); (tmp_path / 'cache' / 'models').symlink_to(models, target_is_directory=True)
    r = run('demo', '--limit', '20', '-q', cwd=repo, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert subprocess.run(['git', 'status', '--porcelain'], cwd=repo, capture_output=True, text=True).stdout == ''
    report = tmp_path / 'cache' / 'runs' / 'demo' / 'report' / 'report.html'
    assert report.exists() and str(report) in r.stdout


def test_select_errors_name_the_options(tmp_path, capsys):
    "What a method lacks is said with this command's options, not with Python arguments."
    code, out, err = cli_main(['select', ASSET, '--method', 'ds2', '--budget', '10', '--out', tmp_path / 's.jsonl'], capsys)
    assert code == 1 and '--method ds2 needs a curation report: --report DIR' in err, err
    assert 'report=curate_scores' not in err and 'Traceback' not in err
    code, out, err = cli_main(['select', ASSET, '--method', 'alpagasus', '--budget', '10', '--out', tmp_path / 's.jsonl'], capsys)
    assert code == 1 and '--scores TABLE' in err, err
    assert not (tmp_path / 's.jsonl').exists()
