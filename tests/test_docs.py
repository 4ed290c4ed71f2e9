"""The rendered docs and the demo report, opened in a real headless Chromium.

Quarto is not installable here, so `.ci/build_docs.sh` renders the nbdev-processed notebooks to HTML with
nbconvert; CI points LLM_CURATE_DOCS_HTML at that folder (and LLM_CURATE_DEMO_REPORT at the demo's report).
Without them the test renders what it needs itself, into its temp dir.
"""
import os, re, shutil, subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason='Debian chromium is not installed (.ci/run installs it)')


@pytest.fixture(scope='module')
def docs_html(tmp_path_factory):
    d = os.environ.get('LLM_CURATE_DOCS_HTML')
    if d and Path(d, 'index.html').exists(): return Path(d)
    out = tmp_path_factory.mktemp('docs_html')
    subprocess.run(['bash', str(ROOT / '.ci' / 'build_docs.sh'), str(out)], check=True, cwd=ROOT, timeout=900)
    return out


@pytest.fixture(scope='module')
def browser():
    sync_api = pytest.importorskip('playwright.sync_api')
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
            '--disable-component-update', '--disable-sync'])
        yield b
        b.close()


def open_page(browser, path: Path, shot: Path):
    "Load a local page; return (page, errors) after taking a full-page screenshot."
    page = browser.new_page(viewport={'width': 1200, 'height': 900})
    errors = []
    page.on('pageerror', lambda e: errors.append(f'page error: {e}'))
    page.on('console', lambda m: errors.append(f'console {m.type}: {m.text}') if m.type == 'error' else None)
    # offline machine: requests to CDNs (MathJax, require.js) fail; they are not the page's own errors
    page.route('http*://**', lambda route: route.abort())
    resp = page.goto(path.as_uri(), wait_until='load')
    assert resp is None or resp.ok
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    offline = ('net::ERR_FAILED', 'Failed to load resource', 'Failed to fetch dynamically imported module: http')
    own = [e for e in errors if not any(o in e for o in offline)]
    return page, own


def images_ok(page) -> list:
    "Natural widths of the page's images (0 = broken)."
    page.wait_for_function("Array.from(document.images).every(i => i.complete)")
    return page.evaluate("Array.from(document.images).map(i => i.naturalWidth)")


def looks_like_docs(page) -> list:
    "Defects of an offline-rendered docs page, as a list of what is wrong (empty = looks like documentation)."
    text = page.inner_text('body')
    bad = []
    if re.search(r'^---\s*$', text, re.M) or re.search(r'^(output-file|description|title): ', text, re.M): bad.append('raw front matter')
    if '#|' in text: bad.append('#| directives')
    if re.search(r'(In|Out)\s*\[\s*\d*\s*\]\s*:', text): bad.append('In [ ]: prompts')
    if re.search(r'\{\s*target=|\{\s*style=', text): bad.append('literal {target=...} attributes')
    nav = page.locator('nav a')
    if nav.count() < 10: bad.append(f'no navigation ({nav.count()} links)')
    if page.locator('h1').count() == 0: bad.append('no title')
    return bad


def math_rendered(page) -> int:
    "Number of typeset formulas once MathJax is done (0 when it did not run, e.g. it was loaded from an unreachable CDN)."
    try: page.wait_for_function("window.MathJax && MathJax.Hub && MathJax.Hub.queue && MathJax.Hub.queue.pending === 0 && "
                                "document.querySelectorAll('.MathJax_CHTML, mjx-container, .MathJax').length > 0", timeout=30_000)
    except Exception: return 0
    return page.evaluate("document.querySelectorAll('.MathJax_CHTML, mjx-container, .MathJax').length")


def test_index_page(docs_html, browser, tmp_path):
    page, errors = open_page(browser, docs_html / 'index.html', tmp_path / 'index.png')
    assert not errors, errors
    text = page.inner_text('body')
    assert 'llm_curate' in text and 'Quickstart' in text and 'nbdev_test' in text
    assert looks_like_docs(page) == []
    # the mermaid diagram is drawn (an SVG), not shown as its source
    page.wait_for_function("document.querySelector('pre.mermaid svg') !== null", timeout=30_000)
    assert 'flowchart' not in text and 'graph LR' not in text and 'graph TD' not in text
    # navigation: the sidebar lists the pages, and its links lead to pages that exist
    hrefs = page.eval_on_selector_all('nav a', 'els => els.map(e => e.getAttribute("href"))')
    assert {'data.html', 'curate.html', 'demo.html'} <= set(hrefs), hrefs
    assert all((docs_html / h).exists() for h in hrefs), [h for h in hrefs if not (docs_html / h).exists()]


def test_data_api_page(docs_html, browser, tmp_path):
    page, errors = open_page(browser, docs_html / 'data.html', tmp_path / 'data.png')
    assert not errors, errors
    text = page.inner_text('body')
    assert 'load_samples' in text and 'Load an instruction-tuning pool' in text  # show_doc rendered the docstring
    assert looks_like_docs(page) == []
    assert 'show_doc(' not in text                                               # its input is hidden, as on the site
    # links to other API pages point at the local files, not at the docs site
    hrefs = page.eval_on_selector_all('a', 'els => els.map(e => e.getAttribute("href") || "")')
    assert not [h for h in hrefs if 'llm-curate.github.io' in h], 'links to the docs site'


def test_curate_api_page(docs_html, browser, tmp_path):
    page, errors = open_page(browser, docs_html / 'curate.html', tmp_path / 'curate.png')
    assert not errors, errors
    text = page.inner_text('body')
    assert 'ScoreCurator' in text and 'curate_scores' in text and 'transition' in text
    assert looks_like_docs(page) == []
    assert math_rendered(page) >= 5                  # the formulas are typeset by the local MathJax
    page.screenshot(path=str(tmp_path / 'curate_math.png'), full_page=False)
    widths = images_ok(page)
    assert len(widths) >= 2 and all(w > 0 for w in widths), widths  # the T heatmaps and histograms


@pytest.fixture(scope='module')
def demo_report(tmp_path_factory):
    "The demo's report: LLM_CURATE_DEMO_REPORT when CI made one, else a quick demo run on 300 samples."
    r = os.environ.get('LLM_CURATE_DEMO_REPORT')
    if r and Path(r).exists(): return Path(r)
    out = tmp_path_factory.mktemp('demo') / 'run'
    res = subprocess.run(['llm_curate', 'demo', '--limit', '300', '--out', str(out), '-q'], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert 'weak' in res.stdout and str(out / 'report' / 'report.html') in res.stdout
    return out / 'report' / 'report.html'


def test_demo_report_page(demo_report, browser, tmp_path):
    page, errors = open_page(browser, demo_report, tmp_path / 'demo_report.png')
    assert not errors, errors
    text = page.inner_text('body')
    for h in ('SmolLM2-135M-Instruct', 'Curation', 'rated score to each curated score', 'Selection',
              'Mix of the selected subset by template', 'What was picked and why', 'A random slice of the subset',
              'Scores curation changed most', "neighbours' rated scores", 'ranks by the curated score', 'Score distributions'):
        assert h in text, h
    assert 'Not shown' not in text and 'no result JSON found' not in text   # what a run lacks does not read like an error
    assert 'Transition matrices' not in text            # T is drawn once, in the curation figure
    # no pandas index-name header row (the stray "method" row): every table has one header row
    assert page.evaluate("Array.from(document.querySelectorAll('thead')).every(t => t.rows.length === 1)")
    # the samples tables: real rows with an instruction, a score change and a reason, laid out readably
    tables = page.locator('table.samples')
    assert tables.count() == 3
    top = tables.nth(0)
    heads = top.locator('th').all_inner_texts()
    assert heads[:3] == ['rank', 'id', 'instruction'] and 'reason' in heads and 'long-tail' in heads, heads
    rows = top.locator('tbody tr')
    assert rows.count() >= 5
    first = rows.nth(0).locator('td').all_inner_texts()
    assert len(first[2]) > 10 and '→' in first[4] and 'score' in first[-1], first
    shot = tmp_path / 'samples_table.png'
    top.screenshot(path=str(shot))
    box = top.bounding_box()
    assert box['width'] <= 1200 and box['height'] > 5 * 18 and shot.stat().st_size > 5_000, box   # fits the page, rows of text
    font = page.evaluate("parseFloat(getComputedStyle(document.querySelector('table.samples td')).fontSize)")
    assert font >= 12, font
    changed = tables.nth(2).locator('th').all_inner_texts()
    assert "neighbours' rated scores" in changed and 'confidence' in changed, changed
    # figures: every image loads, is shown at its natural size (not shrunk), with text >= 10 px and no legend over the bars
    widths = images_ok(page)
    assert len(widths) >= 3 and all(w > 0 for w in widths), widths      # curation, selection mix, score distributions
    imgs = page.evaluate("""Array.from(document.images).map(i => ({alt: i.alt, natural: i.naturalWidth, shown: i.clientWidth,
                              font: parseFloat(i.dataset.minFontPx), overlap: parseInt(i.dataset.legendOverlap)}))""")
    for im in imgs:
        assert im['shown'] >= 0.98 * im['natural'], im
        assert im['font'] >= 10, im
        assert im['overlap'] == 0, im
