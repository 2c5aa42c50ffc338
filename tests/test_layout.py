"""The C sources are laid out one concept per folder (docs/architecture.md),
and the folders depend on each other in one direction only: a newcomer can
read them bottom-up, and a new storage plugs in without touching the core."""
import collections
import glob
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")
# the module's glue at the top of csrc/ (module.c calls every concept's init;
# state.h embeds every concept's state) is the one place that sees them all
GLUE = {"module.c", "state.h"}


def _folder_graph():
    graph = collections.defaultdict(set)
    for path in glob.glob(os.path.join(CSRC, "**", "*.[ch]"), recursive=True):
        rel = os.path.relpath(path, CSRC)
        folder = os.path.dirname(rel)
        if not folder:
            assert rel in GLUE, f"csrc/{rel}: every source file belongs to a concept folder"
            continue
        with open(path) as f:
            for inc in re.findall(r'^#include "([^"]+)"', f.read(), re.M):
                dep = os.path.dirname(inc)
                if inc == "state.h" or dep == folder:
                    continue
                assert dep, f"csrc/{rel} includes {inc!r}: name the folder (\"core/key.h\")"
                graph[folder].add(dep)
    return graph


def _cycle(graph):
    state = {}

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path + [node, nxt]
            if nxt not in state:
                found = visit(nxt, path + [node])
                if found:
                    return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node, [])
            if found:
                return found
    return None


def test_concept_folders_include_each_other_without_cycles():
    graph = _folder_graph()
    assert graph, "no includes found"
    cycle = _cycle(graph)
    assert cycle is None, "include cycle between concept folders: " + " -> ".join(cycle)


def test_includes_resolve_inside_csrc():
    for path in glob.glob(os.path.join(CSRC, "**", "*.[ch]"), recursive=True):
        with open(path) as f:
            for inc in re.findall(r'^#include "([^"]+)"', f.read(), re.M):
                assert os.path.exists(os.path.join(CSRC, inc)), f"{path}: {inc} not found"
