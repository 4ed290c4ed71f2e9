"""Offline preview of the docs (Quarto cannot be installed here): nbdev processes the notebooks (show_doc, directives)
into _proc/, and each processed notebook is rendered to HTML with nbconvert, then made to read like the documentation:
front matter becomes the page title and summary, `#|` directives and `In [ ]:` prompts go, Quarto link attributes
(`{target="_blank" ...}`) go, links to the docs site point at the local pages, math is typeset by a local MathJax and
the mermaid diagram by a local mermaid (both from npm, cached under .cache/docs_js, never committed), and every page
has the sidebar of nbs/sidebar.yml with previous/next links.

    python .ci/build_docs.py OUT        # (.ci/build_docs.sh calls it)

It calls nbdev's processing directly: `nbdev_proc_nbs` would try to install Quarto with sudo and reinstall the package.
"""
import html, json, os, re, shutil, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
JS = ROOT / '.cache' / 'docs_js'
NPM = ['mathjax@2.7.9', 'mermaid@11']
SKIP_MATHJAX = {'unpacked', 'test', 'png', 'otf', 'eot', 'svg', 'STIX-Web', 'Asana-Math', 'Gyre-Pagella', 'Gyre-Termes',
                'Latin-Modern', 'Neo-Euler', 'TeX-Web'}


def js_assets(out: Path) -> dict:
    "Copy the local MathJax and mermaid into out/_static (npm-installed once into .cache/docs_js); name -> relative URL."
    mj, mm = JS / 'node_modules' / 'mathjax', JS / 'node_modules' / 'mermaid' / 'dist' / 'mermaid.min.js'
    if not (mj / 'MathJax.js').exists() or not mm.exists():
        JS.mkdir(parents=True, exist_ok=True)
        subprocess.run(['npm', 'install', '--no-save', '--no-audit', '--no-fund', '--loglevel=error', '--prefix', str(JS), *NPM],
                       check=True, stdout=subprocess.DEVNULL)
    static = out / '_static'
    if (static / 'mathjax').exists(): shutil.rmtree(static / 'mathjax')
    shutil.copytree(mj, static / 'mathjax', ignore=lambda d, names: [n for n in names if n in SKIP_MATHJAX])
    shutil.copy(mm, static / 'mermaid.min.js')
    return {'mathjax': '_static/mathjax/MathJax.js?config=TeX-AMS_CHTML-full,Safe', 'mermaid': '_static/mermaid.min.js'}


def sidebar() -> list:
    "[(section or None, notebook name)] in sidebar order."
    import yaml
    items = []
    def walk(contents, section=None):
        for c in contents:
            if isinstance(c, str): items.append((section, c))
            else: walk(c.get('contents', []), c.get('section'))
    walk(yaml.safe_load((ROOT / 'nbs' / 'sidebar.yml').read_text())['website']['sidebar']['contents'])
    return items


FRONT = re.compile(r'^---\s*\n(.*?)\n---\s*$', re.S)
ATTR = re.compile(r'\{(?:target|style|\.)[^{}\n]*\}')      # Quarto/pandoc attributes after links: {target="_blank" ...}


def front_matter(nb) -> dict:
    import yaml
    c = nb.cells[0] if nb.cells else None
    if c is not None and c.cell_type == 'raw' and FRONT.match(c.source.strip()):
        nb.cells.pop(0)
        return yaml.safe_load(FRONT.match(c.source.strip()).group(1)) or {}
    return {}


def clean(nb, site: str, pages: dict):
    "Drop directives, hidden inputs and Quarto attributes; point docs-site links at the local pages."
    def links(s):
        s = ATTR.sub('', s)
        return re.sub(re.escape(site.rstrip('/')) + r'/([\w.-]+\.html)', lambda m: pages.get(m.group(1), m.group(1)), s)
    for c in nb.cells:
        if c.cell_type == 'code':
            lines = c.source.splitlines()
            opts = {l[3:].split(':')[0].strip(): l.split(':', 1)[-1].strip() for l in lines if l.startswith('#| ')}
            c.source = '\n'.join(l for l in lines if not l.startswith('#|')).strip('\n')
            if opts.get('echo') == 'false' or 'hide_input' in opts: c.metadata.setdefault('tags', []).append('remove_input')
            for o in c.get('outputs', []):
                for k in ('text/markdown', 'text/html'):
                    if k in o.get('data', {}): o['data'][k] = links(''.join(o['data'][k]))
        else: c.source = links(c.source)


NAV_CSS = """
body { margin: 0; }
nav.docs-nav { position: fixed; top: 0; left: 0; bottom: 0; width: 15rem; overflow-y: auto; padding: 1rem;
  background: #f7f7f9; border-right: 1px solid #ddd; font: 14px/1.5 sans-serif; box-sizing: border-box; }
nav.docs-nav a { display: block; color: #2c5aa0; text-decoration: none; padding: 1px 0; }
nav.docs-nav a.current { font-weight: bold; color: #000; }
nav.docs-nav .section { margin-top: .8rem; font-weight: bold; color: #555; text-transform: uppercase; font-size: 12px; }
main.docs-page { margin-left: 16rem; padding: 0 1.5rem; max-width: 62rem; }
header.docs-title h1 { margin-bottom: .2rem; } header.docs-title p { color: #555; font-size: 1.1rem; margin-top: 0; }
.docs-pager { display: flex; justify-content: space-between; margin: 2rem 0; font: 14px sans-serif; }
pre.mermaid { background: none; border: 0; }
"""

MERMAID_JS = """<script src="{src}"></script>
<script>
document.querySelectorAll('code.language-mermaid, pre > code.mermaid').forEach(function (c) {{
  var pre = document.createElement('pre'); pre.className = 'mermaid'; pre.textContent = c.textContent;
  c.parentElement.replaceWith(pre);
}});
mermaid.initialize({{startOnLoad: false, securityLevel: 'strict'}});
mermaid.run({{querySelector: 'pre.mermaid'}});
</script>"""


def main(out: str = '_docs_html'):
    import nbformat
    from nbconvert import HTMLExporter
    os.chdir(ROOT)
    out = Path(out).resolve(); out.mkdir(parents=True, exist_ok=True)
    from nbdev.config import get_config
    from nbdev.serve import proc_nbs
    cfg = get_config()
    proc = proc_nbs(path=str(ROOT / 'nbs'), n_workers=min(2, os.cpu_count() or 1), force=True)
    order = sidebar()
    names = [n for _, n in order] + sorted(p.name for p in proc.glob('*.ipynb') if p.name not in {n for _, n in order})
    nbs, metas = {}, {}
    for n in names:
        if not (proc / n).exists(): continue
        nb = nbformat.read(proc / n, as_version=4)
        metas[n] = front_matter(nb); nbs[n] = nb
    page = {n: 'index.html' if n == 'index.ipynb' else (metas[n].get('output-file') or Path(n).stem + '.html') for n in nbs}
    site = f"{cfg.doc_host.rstrip('/')}{cfg.doc_baseurl}"
    assets = js_assets(out)
    from nbconvert.preprocessors import TagRemovePreprocessor
    ex = HTMLExporter(template_name='lab', exclude_input_prompt=True, exclude_output_prompt=True, mathjax_url=assets['mathjax'])
    ex.register_preprocessor(TagRemovePreprocessor(remove_input_tags={'remove_input'}), enabled=True)
    seq = [n for n in names if n in nbs]
    for k, n in enumerate(seq):
        nb, meta = nbs[n], metas[n]
        clean(nb, site, {page[m]: page[m] for m in page})
        body, _ = ex.from_notebook_node(nb)
        title = meta.get('title') or cfg.lib_name
        nav = ['<nav class="docs-nav">', f'<a href="index.html"><b>{html.escape(cfg.lib_name)}</b></a>']
        last = object()
        for sec, m in order:
            if m not in nbs: continue
            if sec != last and sec: nav.append(f'<div class="section">{html.escape(sec)}</div>')
            last = sec
            t = metas[m].get('title') or m
            nav.append(f'<a href="{page[m]}"{" class=current" if m == n else ""}>{html.escape(str(t))}</a>')
        nav.append('</nav>')
        prev_ = f'<a rel="prev" href="{page[seq[k - 1]]}">← {html.escape(str(metas[seq[k - 1]].get("title", "")))}</a>' if k else '<span></span>'
        next_ = f'<a rel="next" href="{page[seq[k + 1]]}">{html.escape(str(metas[seq[k + 1]].get("title", "")))} →</a>' if k + 1 < len(seq) else '<span></span>'
        head = f'<header class="docs-title"><h1>{html.escape(str(title))}</h1>' + (
            f'<p>{html.escape(str(meta["description"]))}</p>' if meta.get('description') else '') + '</header>'
        body = re.sub(r'<title>.*?</title>', f'<title>{html.escape(str(title))} – {html.escape(cfg.lib_name)}</title>', body, count=1, flags=re.S)
        body = body.replace('</head>', f'<style>{NAV_CSS}</style>\n</head>', 1)
        body = re.sub(r'(<body[^>]*>)', lambda m: m.group(1) + '\n' + '\n'.join(nav) + '\n<main class="docs-page">' + head, body, count=1)
        body = body.replace('</body>', f'<div class="docs-pager">{prev_}{next_}</div></main>\n' + MERMAID_JS.format(src=assets['mermaid']) + '\n</body>', 1)
        (out / page[n]).write_text(body, encoding='utf-8')
    print(f"docs rendered to {out}: {len(seq)} pages")


if __name__ == '__main__':
    main(*sys.argv[1:])
