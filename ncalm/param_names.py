"""The names of a parameter tree's leaves: 'layers/attn/query', 'layers_3/mlp/up', 'head'.

One spelling everywhere a parameter is named by a string: checkpoint checksums, the
transfer's groups, reading another run's checkpoint, the Hugging Face export. Scanned
models stack their layers ('layers/...', a leading layer axis); unscanned ones name each
('layers_i/...').
"""
from __future__ import annotations

from typing import Any

import jax


def leaf_name(path) -> str:
  """A tree path as 'a/b/c'."""
  return jax.tree_util.keystr(path, simple=True, separator='/')


def flat(tree) -> dict[str, Any]:
  """{leaf name: leaf} of a pytree, in its leaf order."""
  return {leaf_name(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def nest(flat_tree: dict[str, Any], separator: str = '/') -> dict:
  """{'a/b': x} → {'a': {'b': x}}."""
  tree: dict = {}
  for name, value in flat_tree.items():
    node = tree
    *parents, leaf = name.split(separator)
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return tree


def split_layer(name: str) -> tuple[int | None, str]:
  """'layers_3/attn/query' → (3, 'attn/query'); 'layers/attn/query' → (None, 'attn/query');
  a name outside the layers → (-1, name)."""
  head, _, rest = name.partition('/')
  if head == 'layers':
    return None, rest
  if head.startswith('layers_') and head[7:].isdigit():
    return int(head[7:]), rest
  return -1, name
