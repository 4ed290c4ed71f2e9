"""House rules of the literate source (DEVELOPERS.md, STYLE.md), checked on every notebook."""
import ast, json, re
from pathlib import Path

import pytest

NBS = Path(__file__).resolve().parent.parent / 'nbs'
NOTEBOOKS = sorted(p for p in NBS.glob('*.ipynb') if not p.name.startswith(('_', '.')))
ORDER = {}  # module -> notebook number prefix
for nb in NOTEBOOKS:
    for c in json.loads(nb.read_text())['cells']:
        m = re.search(r'^#\|\s*default_exp\s+(\S+)', ''.join(c['source']), re.M)
        if m: ORDER[m.group(1)] = nb.name.split('_')[0]


def code_cells(nb):
    for i, c in enumerate(json.loads(nb.read_text())['cells']):
        if c['cell_type'] == 'code': yield i, ''.join(c['source'])


def directives(src):
    return {l.split('|', 1)[1].strip().split()[0] for l in src.splitlines() if l.startswith('#|') and l[2:].strip()}


def tree(src):
    body = '\n'.join(l for l in src.splitlines() if not l.lstrip().startswith(('%', '!')))
    try: return ast.parse(body)
    except SyntaxError: return None


@pytest.mark.parametrize('nb', NOTEBOOKS, ids=lambda p: p.name)
def test_title_and_purpose(nb):
    cells = json.loads(nb.read_text())['cells']
    first = ''.join(cells[0]['source'])
    assert cells[0]['cell_type'] == 'markdown' and first.startswith('# ') and '\n> ' in first, \
        f'{nb.name}: the first cell must be "# Title" then "> one-line summary"'


@pytest.mark.parametrize('nb', NOTEBOOKS, ids=lambda p: p.name)
def test_import_cells_hold_only_imports(nb):
    "nbdev's doc build executes cells with imports: mixing other code in breaks the docs."
    for i, src in code_cells(nb):
        t = tree(src)
        if t is None or 'export' in directives(src) or 'exports' in directives(src): continue
        kinds = [isinstance(s, (ast.Import, ast.ImportFrom)) for s in t.body]
        assert not (any(kinds) and not all(kinds)), f'{nb.name} cell {i}: imports mixed with other code:\n{src[:300]}'


@pytest.mark.parametrize('nb', NOTEBOOKS, ids=lambda p: p.name)
def test_show_doc_alone(nb):
    for i, src in code_cells(nb):
        t = tree(src)
        if t and re.search(r'\bshow_doc\(', src) and len(t.body) > 1:
            assert False, f'{nb.name} cell {i}: show_doc must be alone in its cell'


@pytest.mark.parametrize('nb', NOTEBOOKS, ids=lambda p: p.name)
def test_imports_only_lower_numbers(nb):
    mine = nb.name.split('_')[0]
    for i, src in code_cells(nb):
        for mod in re.findall(r'(?:from|import)\s+llm_curate\.(\w+)', src):
            if mod in ORDER and nb.name != 'index.ipynb' and not mine.isalpha():
                assert ORDER[mod] <= mine or mine >= '10' or ORDER[mod] == mine, \
                    f'{nb.name} cell {i} imports llm_curate.{mod} (notebook {ORDER[mod]}): only lower numbers allowed'


@pytest.mark.parametrize('nb', NOTEBOOKS, ids=lambda p: p.name)
def test_outputs_deterministic_and_small(nb):
    for i, c in enumerate(json.loads(nb.read_text())['cells']):
        for o in c.get('outputs', []):
            text = ''.join(o.get('text', '')) + ''.join(o.get('data', {}).get('text/plain', ''))
            assert not re.search(r' at 0x[0-9a-f]{6,}', text), f'{nb.name} cell {i}: memory address in output'
            assert not re.search(r'/tmp/tmp\w{6,}', text), f'{nb.name} cell {i}: temp path in output'
            png = o.get('data', {}).get('image/png', '')
            assert len(png) < 400_000, f'{nb.name} cell {i}: image of {len(png)//1000} kB base64; make it smaller'


def test_exported_cells_hold_only_definitions():
    for nb in NOTEBOOKS:
        for i, src in code_cells(nb):
            if 'export' not in directives(src): continue
            t = tree(src)
            for s in (t.body if t else []):
                ok = isinstance(s, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
                                    ast.Assign, ast.AnnAssign, ast.If, ast.Try)) or (
                     isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))
                assert ok, f'{nb.name} cell {i}: exported cells hold only definitions, found {type(s).__name__}'
                if isinstance(s, ast.Expr) or isinstance(s, (ast.Assign, ast.AnnAssign)):
                    v = s.value
                    assert not (isinstance(v, ast.Call) and getattr(v.func, 'id', '') in ('print', 'seed')), \
                        f'{nb.name} cell {i}: no printing or seeding in exported cells'
