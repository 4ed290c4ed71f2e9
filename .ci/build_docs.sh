#!/usr/bin/env bash
# Quarto cannot be installed here, so the docs are checked as an offline preview: see .ci/build_docs.py (nbdev's
# notebook processing called directly, so nothing tries to install Quarto with sudo or reinstall the package).
set -euo pipefail
cd "$(dirname "$0")/.."
python .ci/build_docs.py "${1:-_docs_html}"
