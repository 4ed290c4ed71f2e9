#!/usr/bin/env bash
# Quarto cannot be installed here, so the docs are checked this way: nbdev processes the notebooks
# (show_doc, directives) into _proc/, and nbconvert renders each processed notebook to HTML in OUT.
set -euo pipefail
out=${1:-_docs_html}
cd "$(dirname "$0")/.."
# --force also regenerates nbs/sidebar.yml (ignoring custom_sidebar): keep ours
keep=$(mktemp); cp nbs/sidebar.yml "$keep"
nbdev_proc_nbs --force >/dev/null
cp "$keep" nbs/sidebar.yml; rm -f "$keep"
mkdir -p "$out"
jupyter nbconvert --to html --log-level=WARN --output-dir "$out" _proc/*.ipynb
echo "docs rendered to $out: $(ls "$out" | wc -l) pages"
