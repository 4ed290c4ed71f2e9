__version__ = "0.1.0"

import warnings as _warnings
# tqdm.auto warns in notebooks without ipywidgets; its text bars work fine there, so keep the outputs (our docs) clean
_warnings.filterwarnings('ignore', message='IProgress not found')
