"""YAML for recipes and override values, bounded: safe tags only, and no document that expands past a cap.

`yaml.safe_load` refuses code, but not size: a few lines of nested aliases (the "billion laughs" document)
load as a small graph of shared lists that anything copying it (the recipe merge, OmegaConf) expands into
billions of values, and `distill fit` hangs. Here the composed node graph is measured with every alias
counted as the copy it becomes, before anything is built from it; a recursive alias is refused too.
"""

from __future__ import annotations

import yaml

MAX_CHARS = 1 << 20  # a recipe is a few kB; the largest in recipes/ is under 4 kB
MAX_VALUES = 100_000  # scalars + lists + mappings once every alias is expanded


class YAMLTooLarge(ValueError):
    pass


def _expanded_size(root: yaml.Node) -> int:
    """Number of nodes once aliases are expanded (shared nodes counted once per reference); iterative,
    memoised per node, so a deep or alias-heavy document costs time linear in its text."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        kids = _children(node)
        if children_done:
            on_path.discard(key)
            sizes[key] = min(1 + sum(sizes[id(k)] for k in kids), MAX_VALUES + 1)
            continue
        if key in on_path:
            raise YAMLTooLarge("a recursive alias (an anchor used inside itself)")
        on_path.add(key)
        stack.append((node, True))
        for kid in kids:
            if id(kid) in on_path:
                raise YAMLTooLarge("a recursive alias (an anchor used inside itself)")
            if id(kid) not in sizes:
                stack.append((kid, False))
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def load(text: str):
    """Like yaml.safe_load, but raises YAMLTooLarge for a document over MAX_CHARS characters or MAX_VALUES
    values after alias expansion, and yaml.YAMLError for malformed YAML (including nesting too deep for
    the parser)."""
    if len(text) > MAX_CHARS:
        raise YAMLTooLarge(f"{len(text)} characters, more than the {MAX_CHARS} a recipe may have")
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node) > MAX_VALUES:
            raise YAMLTooLarge(f"more than {MAX_VALUES} values once its aliases (*name) are expanded")
        return loader.construct_document(node)
    except RecursionError:
        raise yaml.YAMLError("nested too deeply to read") from None
    finally:
        loader.dispose()
