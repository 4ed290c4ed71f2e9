"""Shared pytest setup: offline, quiet, a private cache per test session."""
import os, pytest

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('HF_DATASETS_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: long-running test (skipped unless --runslow)')
    config.addinivalue_line('markers', 'gpu: needs a CUDA GPU (skipped when none)')


def pytest_addoption(parser):
    parser.addoption('--runslow', action='store_true', default=False, help='run tests marked slow')


def pytest_collection_modifyitems(config, items):
    try:
        import torch
        has_gpu = torch.cuda.is_available()
    except Exception:
        has_gpu = False
    for item in items:
        if 'slow' in item.keywords and not config.getoption('--runslow'):
            item.add_marker(pytest.mark.skip(reason='slow: run with --runslow'))
        if 'gpu' in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason='needs a CUDA GPU'))


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Each session gets its own data cache; converted model weights (GGUF -> safetensors, ~20 s each) are shared
    with the user's cache, since they depend only on the model file."""
    from llm_curate.data import default_cache_dir
    private = tmp_path_factory.getbasetemp() / 'llm_curate_cache'
    if not (private / 'models').exists():
        shared = default_cache_dir() / 'models'
        shared.mkdir(parents=True, exist_ok=True); private.mkdir(parents=True, exist_ok=True)
        (private / 'models').symlink_to(shared, target_is_directory=True)
    monkeypatch.setenv('LLM_CURATE_CACHE', str(private))
