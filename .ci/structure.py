#!/usr/bin/env python3
"""Structure checks for the product crates (issue 9's rules), in one run:

- no import circle among a crate's modules (`use crate::...`, `super::...`
  and a module's use of its own children; tests and comments ignored);
- no source file over 500 lines in proto, certs, channel, sidecar or sdk;
- no match on `Transport`'s variants outside channel/ (tests aside, in
  `#[cfg(test)]` blocks or `tests.rs` files).

Regex-based, so approximate; it found the three circles issue 9 named.
Exits 1 with what it found, else prints one line.
"""
import glob
import os
import re
import sys

CRATES = ["proto", "certs", "channel", "sidecar", "sdk"]
MAX_LINES = 500


def modules(crate):
    src = f"{crate}/src"
    files = glob.glob(f"{src}/**/*.rs", recursive=True)

    def name(f):
        r = os.path.relpath(f, src)[:-3].replace("/mod", "").replace("/", "::")
        return "crate" if r in ("lib", "main") else r

    return {name(f): f for f in files}


def edges(mods):
    names = set(mods)

    def resolve(parts):
        for k in range(len(parts), 0, -1):
            c = "::".join(parts[:k])
            if c in names:
                return c
        return None

    g = {}
    for m, f in mods.items():
        with open(f) as fh:
            s = fh.read().split("#[cfg(test)]")[0]
        s = re.sub(r"//[^\n]*", "", s)
        deps = set()
        for path, _, inner in re.findall(r"crate::([a-z_]+(?:::[a-z_]+)*)(::\{([^}]*)\})?", s):
            parts = path.split("::")
            subs = [x.strip().split("::")[0] for x in inner.split(",")] if inner else []
            hits = [resolve(parts + [x]) for x in subs]
            hits = [h for h in hits if h and h != resolve(parts)] or [resolve(parts)]
            deps.update(h for h in hits if h)
        for inner in re.findall(r"crate::\{([^}]*)\}", s):
            for x in inner.split(","):
                h = resolve(x.strip().split("::"))
                if h:
                    deps.add(h)
        parent = None if m == "crate" else (m.rsplit("::", 1)[0] if "::" in m else "crate")
        for u in re.findall(r"\bsuper::([a-z_]+)", s):
            sib = f"{parent}::{u}" if parent and parent != "crate" else u
            deps.add(sib if sib in names else parent)
        prefix = "" if m == "crate" else m + "::"
        depth = 0 if m == "crate" else m.count("::") + 1
        for child in (n for n in names if n.startswith(prefix) and n != m and n.count("::") == depth):
            leaf = child.rsplit("::", 1)[-1]
            body = re.sub(r"\b(pub(\([a-z]+\))? )?mod " + leaf + r";", "", s)
            body = re.sub(r"pub(\([a-z]+\))? use " + leaf + r"::[^;]*;", "", body)
            if re.search(r"(?<![:\w])" + leaf + r"::", body):
                deps.add(child)
        deps.discard(m)
        deps.discard("crate")
        g[m] = deps
    return g


def cycles(g):
    found = set()

    def dfs(n, stack):
        for d in g.get(n, ()):
            if d in stack:
                found.add(tuple(sorted(set(stack[stack.index(d):]))))
            elif len(stack) < 16:
                dfs(d, stack + [d])

    for n in g:
        if n != "crate":
            dfs(n, [n])
    return found


problems = []
for crate in CRATES:
    mods = modules(crate)
    for c in sorted(cycles(edges(mods))):
        problems.append(f"{crate}: modules import each other: {' <-> '.join(c)}")
    for f in mods.values():
        with open(f) as fh:
            n = sum(1 for _ in fh)
        if n > MAX_LINES:
            problems.append(f"{f}: {n} lines (at most {MAX_LINES})")
for f in glob.glob("sdk/src/**/*.rs", recursive=True) + glob.glob("sidecar/src/**/*.rs", recursive=True) + glob.glob("sdk/examples/*.rs"):
    if f.endswith("/tests.rs"):
        continue  # a `#[cfg(test)] mod tests;` file
    with open(f) as fh:
        s = fh.read().split("#[cfg(test)]")[0]
    if re.search(r"Transport::(Quic|TcpTls)\b", s):
        problems.append(f"{f}: names a Transport variant (ask channel/ instead: can_migrate, intersect, ...)")
if problems:
    print("\n".join(problems))
    sys.exit(1)
print(f"structure: no module circles, no file over {MAX_LINES} lines, no Transport match outside channel/")
