"""The circuit graph of a TransformerLens model (EAP-IG / MIB names) and the hook machinery it needs.

Writers put a vector into the residual stream: the token embedding ``input``, every attention head
``a{L}.h{H}`` (its output ``z_h · W_O[h]``, TransformerLens' ``attn.hook_result``) and every MLP
``m{L}``. Readers take the residual stream as input: each head's query, key and value inputs
``a{L}.h{H}<q|k|v>`` (TransformerLens' split ``hook_q_input``/``hook_k_input``/``hook_v_input``,
taken before the block's layer norm), each MLP's input ``m{L}`` (``hook_mlp_in``) and the
``logits`` (the final ``hook_resid_post``). Because the residual stream is a running sum, a reader's
input is exactly the sum of the writers below it plus terms that are the same in every run (biases,
positional embeddings); an edge ``writer -> reader`` exists for every writer below the reader.

Grouped-query attention: the key and value inputs belong to the key/value head, and query head
``H`` reads those of kv head ``H // (n_heads / n_kv_heads)``. There is one physical k (and v)
input per kv head, so the graph has one ``<k>`` and one ``<v>`` reader per kv head, named after the
first query head of its group (``a{L}.h{j*g}<k>``); every query head of the group reads it, and
the name of any query head of the group is accepted as an alias. (Giving each query head a private
copy of the key input would be a different model; see docs/circuits.md.)
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

import torch
from torch import Tensor

from ..tl import hooks as hk
from ..errors import InputError, ModelError, suggest
from ..tl.adapter import ModelAdapter
from ..tl.hooks import attn_out, attn_result as result, attn_z as z_hook, k_in, mlp_in, mlp_out, q_in, v_in

EMBED = hk.EMBED
_READER_RE = re.compile(r"^a(\d+)\.h(\d+)<([qkv])>$")
_HEAD_RE = re.compile(r"^a(\d+)\.h(\d+)$")
_MLP_RE = re.compile(r"^m(\d+)$")


@dataclass(frozen=True)
class Graph:
    """Writers, readers and edges of one model. Edge ``(w, r)`` exists iff ``mask[w, r]``."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    has_mlp: bool
    parallel_attn_mlp: bool
    writers: tuple[str, ...]
    readers: tuple[str, ...]
    writer_stage: tuple[int, ...]
    reader_stage: tuple[int, ...]
    mask: Tensor = field(repr=False)  # [W, R] bool
    aliases: dict[str, str] = field(repr=False, default_factory=dict)

    @classmethod
    def of(cls, adapter: ModelAdapter) -> "Graph":
        cfg = adapter.cfg
        L, H, KV = adapter.n_layers, adapter.n_heads, adapter.n_kv_heads
        if H % KV:
            raise ModelError(f"{H} query heads cannot share {KV} key/value heads evenly.")
        g = H // KV
        has_mlp = not bool(getattr(cfg, "attn_only", False))
        parallel = bool(getattr(cfg, "parallel_attn_mlp", False))
        writers, wst = ["input"], [0]
        readers, rst = [], []
        aliases: dict[str, str] = {}
        for layer in range(L):
            s_attn, s_mlp = 2 * layer + 1, 2 * layer + 2
            readers += [f"a{layer}.h{h}<q>" for h in range(H)]
            for port in "kv":
                for j in range(KV):
                    name = f"a{layer}.h{j * g}<{port}>"
                    readers.append(name)
                    for h in range(j * g, (j + 1) * g):
                        aliases[f"a{layer}.h{h}<{port}>"] = name
            rst += [s_attn] * (H + 2 * KV)
            writers += [f"a{layer}.h{h}" for h in range(H)]
            wst += [s_attn] * H
            if has_mlp:
                readers.append(f"m{layer}")
                # a parallel MLP reads the block input, like the heads of its layer
                rst.append(s_attn if parallel else s_mlp)
                writers.append(f"m{layer}")
                wst.append(s_mlp)
        readers.append("logits")
        rst.append(2 * L + 1)
        ws, rs = torch.tensor(wst), torch.tensor(rst)
        mask = ws[:, None] < rs[None, :]
        return cls(L, H, KV, has_mlp, parallel, tuple(writers), tuple(readers), tuple(wst), tuple(rst), mask, aliases)

    # ----- names -------------------------------------------------------------------------------
    @property
    def group(self) -> int:
        return self.n_heads // self.n_kv_heads

    @property
    def n_edges(self) -> int:
        return int(self.mask.sum())

    @property
    def writer_index(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.writers)}

    @property
    def reader_index(self) -> dict[str, int]:
        return {r: i for i, r in enumerate(self.readers)}

    def edge_list(self) -> list[tuple[str, str]]:
        """Every edge (writer, reader), writers in graph order, readers in graph order."""
        idx = self.mask.nonzero().tolist()
        return [(self.writers[w], self.readers[r]) for w, r in idx]

    def canonical_reader(self, name: str) -> str:
        if name in self.reader_index:
            return name
        if name in self.aliases:
            return self.aliases[name]
        raise InputError(
            f"Unknown reader {name!r}.{suggest(str(name), list(self.readers))} Readers are "
            "'a{L}.h{H}<q|k|v>', 'm{L}' and 'logits' (list them with graph.readers)."
        )

    def parse_edge(self, edge: Any) -> tuple[int, int]:
        """(writer index, reader index) of an edge given as (writer, reader) or 'writer->reader'."""
        if isinstance(edge, str):
            if "->" not in edge:
                raise InputError(f"An edge is 'writer->reader' or a (writer, reader) pair; got {edge!r}.")
            w, r = edge.split("->", 1)
        elif isinstance(edge, (tuple, list)) and len(edge) in (2, 3):
            w, r = edge[0], edge[1]
        else:
            raise InputError(f"An edge is 'writer->reader' or a (writer, reader) pair; got {edge!r}.")
        wi = self.writer_index.get(str(w))
        if wi is None:
            raise InputError(
                f"Unknown writer {w!r}.{suggest(str(w), list(self.writers))} Writers are 'input', "
                "'a{L}.h{H}' and 'm{L}'."
            )
        ri = self.reader_index[self.canonical_reader(str(r))]
        if not bool(self.mask[wi, ri]):
            raise InputError(
                f"There is no edge {w}->{r}: a writer feeds only readers above it "
                f"({w} is at stage {self.writer_stage[wi]}, {r} at stage {self.reader_stage[ri]})."
            )
        return wi, ri

    def edge_mask(self, edges: Iterable[Any]) -> Tensor:
        m = torch.zeros_like(self.mask)
        for e in edges:
            wi, ri = self.parse_edge(e)
            m[wi, ri] = True
        return m

    def check_node(self, name: str) -> str:
        if name in self.writers or name == "logits":
            return name
        raise InputError(
            f"Unknown node {name!r}.{suggest(str(name), list(self.writers) + ['logits'])} Nodes are "
            "'input', 'a{L}.h{H}', 'm{L}' and 'logits'."
        )

    # ----- reader layout ------------------------------------------------------------------------
    def layer_readers(self, layer: int) -> dict[str, slice]:
        """Reader index ranges of one layer: q (n_heads), k, v (n_kv_heads each), mlp (1)."""
        H, KV = self.n_heads, self.n_kv_heads
        start = layer * (H + 2 * KV + int(self.has_mlp))
        out = {
            "q": slice(start, start + H),
            "k": slice(start + H, start + H + KV),
            "v": slice(start + H + KV, start + H + 2 * KV),
        }
        if self.has_mlp:
            out["mlp"] = slice(start + H + 2 * KV, start + H + 2 * KV + 1)
        return out

    def reader_nodes(self, r: int) -> list[str]:
        """The writer nodes a reader feeds (its head, the heads of a kv group, its MLP, logits)."""
        name = self.readers[r]
        if name == "logits":
            return ["logits"]
        m = _READER_RE.match(name)
        if m:
            layer, h, port = int(m.group(1)), int(m.group(2)), m.group(3)
            if port == "q":
                return [f"a{layer}.h{h}"]
            return [f"a{layer}.h{x}" for x in range(h, h + self.group)]
        return [name]

    def writer_readers(self, node: str) -> list[int]:
        """Indices of the readers that feed a writer node (its inputs)."""
        if node == "input":
            return []
        ri = self.reader_index
        m = _HEAD_RE.match(node)
        if m:
            layer, h = int(m.group(1)), int(m.group(2))
            kvh = (h // self.group) * self.group
            return [ri[f"a{layer}.h{h}<q>"], ri[f"a{layer}.h{kvh}<k>"], ri[f"a{layer}.h{kvh}<v>"]]
        if node == "logits":
            return [ri["logits"]]
        return [ri[node]]

    def node_info(self, node: str) -> dict[str, Any]:
        if node == "input":
            return {"id": "input", "kind": "input", "layer": -1, "head": None}
        if node == "logits":
            return {"id": "logits", "kind": "logits", "layer": self.n_layers, "head": None}
        m = _HEAD_RE.match(node)
        if m:
            return {"id": node, "kind": "head", "layer": int(m.group(1)), "head": int(m.group(2))}
        return {"id": node, "kind": "mlp", "layer": int(_MLP_RE.match(node).group(1)), "head": None}  # type: ignore[union-attr]

    # ----- hooks -------------------------------------------------------------------------------
    def reader_hooks(self) -> list[tuple[str, str, slice]]:
        """(hook name, port, reader slice) for every reader hook, in forward order."""
        out = []
        for layer in range(self.n_layers):
            lr = self.layer_readers(layer)
            out += [(q_in(layer), "q", lr["q"]), (k_in(layer), "k", lr["k"]), (v_in(layer), "v", lr["v"])]
            if self.has_mlp:
                out.append((mlp_in(layer), "mlp", lr["mlp"]))
        out.append((hk.resid_post(self.n_layers - 1), "logits", slice(len(self.readers) - 1, len(self.readers))))
        return out

    def writer_hooks(self) -> list[tuple[str, slice]]:
        """(hook name, writer slice) for every writer hook, in forward order."""
        out = [(EMBED, slice(0, 1))]
        i = 1
        for layer in range(self.n_layers):
            out.append((result(layer), slice(i, i + self.n_heads)))
            i += self.n_heads
            if self.has_mlp:
                out.append((mlp_out(layer), slice(i, i + 1)))
                i += 1
        return out


def as_heads(x: Tensor) -> Tensor:
    """[b, p, d] -> [b, p, 1, d]; per-head tensors pass through."""
    return x if x.dim() == 4 else x[:, :, None, :]


@contextlib.contextmanager
def split_flags(adapter: ModelAdapter) -> Iterator[None]:
    """Turn on the per-head reader and writer hooks (TransformerLens' ``use_split_qkv_input``,
    ``use_attn_result``, ``use_hook_mlp_in``) and give the caller's flags back afterwards, also
    when the block raises."""
    model, cfg = adapter.model, adapter.cfg
    names = ("use_attn_in", "use_split_qkv_input", "use_attn_result", "use_hook_mlp_in")
    saved = {n: bool(getattr(cfg, n, False)) for n in names}

    def set_flag(n: str, v: bool) -> None:
        setter = getattr(model, f"set_{n}", None)
        if adapter.kind == "bridge" and setter is not None:
            setter(v)
        else:
            setattr(cfg, n, v)

    try:
        if saved["use_attn_in"]:
            set_flag("use_attn_in", False)
        for n in names[1:]:
            if not saved[n]:
                set_flag(n, True)
        yield
    finally:
        for n in names[1:]:
            if bool(getattr(cfg, n, False)) != saved[n]:
                set_flag(n, saved[n])
        if saved["use_attn_in"]:
            set_flag("use_attn_in", True)


# Pre-norm blocks add the head sum to the residual stream unchanged; float32 noise stays ~1e-6.
ATTN_SUM_RTOL = 1e-3


def check_head_sum(acts: dict[str, Tensor], n_layers: int) -> None:
    """Refuse a model whose attention output is not the sum of its heads' results plus a constant
    (post-attention norms, scaled residuals): edges out of heads would not be what the residual
    stream receives."""
    for layer in range(n_layers):
        per_head, written = acts.get(result(layer)), acts.get(attn_out(layer))
        if per_head is None or written is None:
            raise ModelError(
                f"blocks.{layer} did not report its per-head results and attention output "
                "(attn.hook_result / hook_attn_out); mechattr.circuits needs both."
            )
        rem = written.double() - per_head.double().sum(2)
        rem = rem - rem.mean(dim=(0, 1), keepdim=True)
        rel = float(rem.norm() / written.double().norm().clamp_min(1e-30))
        if rel > ATTN_SUM_RTOL:
            raise ModelError(
                f"The attention output of blocks.{layer} is not the sum of its heads' outputs "
                f"(they differ by {rel:.2g} of its norm): a norm, scale or hook sits between the "
                "heads and the residual stream, so head -> reader edges are not defined. "
                "mechattr.circuits supports pre-norm models whose heads add into the residual "
                "stream (GPT-2, Llama, Pythia-style); remove hooks that change hook_attn_out."
            )


def check_model(adapter: ModelAdapter) -> None:
    cfg = adapter.cfg
    if getattr(cfg, "use_normalization_before_and_after", False):
        raise ModelError(
            "This model normalises each block's output before adding it to the residual stream "
            "(use_normalization_before_and_after): its attention output is not a sum of heads, so "
            "the circuit graph is not defined. Use a pre-norm model."
        )


__all__ = ["Graph", "split_flags", "check_head_sum", "check_model"]
