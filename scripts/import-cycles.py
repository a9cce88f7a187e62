#!/usr/bin/env python3
"""Import cycles between the modules of a crate: `scripts/import-cycles.py agent/src [-v]`.

Reads every non-test module under the folder (binaries excluded), takes each `crate::`/`super::`
path it names as an edge to the module that path lands in (a parent naming its own children is
not an edge: that is how modules are declared), and prints each strongly connected set of two or
more modules. Exits 1 when there is one. `-v` prints the whole graph. CI runs it on agent/src,
which must stay a one-way graph (config at the bottom, the daemon's wiring at the top).
"""
import os, re, sys
from collections import defaultdict
root = sys.argv[1]
files = {}
for d, _, fs in os.walk(root):
    if '/bin' in d[len(root):] : continue
    for f in fs:
        if f.endswith('.rs'):
            p = os.path.join(d, f)
            rel = os.path.relpath(p, root)[:-3]
            parts = rel.split('/')
            if parts[-1] in ('mod', 'lib', 'main'): parts = parts[:-1]
            files[tuple(parts)] = p
def is_test(mod):
    return any(x == 'tests' or x.endswith('_tests') for x in mod)
def resolve(path):
    """The deepest module a path's leading segments name."""
    for n in range(len(path), 0, -1):
        if tuple(path[:n]) in files: return tuple(path[:n])
    return None
edges = defaultdict(set)
for mod, p in files.items():
    if is_test(mod): continue
    src = open(p).read()
    # inline unit tests sit at the end of a file: cut there
    src = re.split(r'#\[cfg\(test\)\]\s*mod tests\s*\{', src)[0]
    for m in re.finditer(r'\b(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)*)(::\{)?', src):
        segs = re.findall(r'[A-Za-z_][A-Za-z0-9_]*', m.group(2))
        base = (list(mod)[:-1] if m.group(1) == 'super' else []) + segs
        paths = [base]
        if m.group(3):  # `crate::a::{b, c::d}`: one path per item of the group
            depth, i, item, items = 1, m.end(), '', []
            while i < len(src) and depth:
                ch = src[i]
                depth += ch == '{'
                depth -= ch == '}'
                if depth == 1 and ch == ',':
                    items.append(item); item = ''
                elif depth:
                    item += ch
                i += 1
            items.append(item)
            paths = [base + re.findall(r'[A-Za-z_][A-Za-z0-9_]*', it)[:1] for it in items if it.strip()]
        for path in paths:
            tgt = resolve(path)
            if tgt is None or tgt == mod: continue
            if tgt[:len(mod)] == mod: continue  # parent -> child: declarations and re-exports
            edges[mod].add(tgt)
# Tarjan SCC
idx = {}; low = {}; st = []; on = set(); sccs = []; c = [0]
sys.setrecursionlimit(10000)
def strong(v):
    idx[v] = low[v] = c[0]; c[0] += 1; st.append(v); on.add(v)
    for w in edges.get(v, ()):
        if w not in idx: strong(w); low[v] = min(low[v], low[w])
        elif w in on: low[v] = min(low[v], idx[w])
    if low[v] == idx[v]:
        comp = []
        while True:
            w = st.pop(); on.discard(w); comp.append(w)
            if w == v: break
        if len(comp) > 1: sccs.append(comp)
for v in list(files):
    if v not in idx and not is_test(v): strong(v)
if '-v' in sys.argv:
    for a in sorted(edges):
        print('::'.join(a) or 'lib', '->', ', '.join(sorted('::'.join(b) or 'lib' for b in edges[a])))
for comp in sccs:
    print(f"cycle of {len(comp)}:", ' '.join(sorted('::'.join(m) for m in comp)))
    for a in sorted(comp):
        print('   ', '::'.join(a), '->', ', '.join(sorted('::'.join(b) for b in edges[a] if b in comp)))
print(f"{len(sccs)} cycle(s)")
sys.exit(1 if sccs else 0)
