"""Fast search for pairs of perceptual-hash codes within a Hamming distance.

Each image has four 64-bit codes: pHash, mirrored pHash, dHash, mirrored dHash (of a 64 x 64 grey
thumbnail). The distance between two images is the smallest, over "as is" and "one of them
mirrored", of pHash + dHash Hamming distance (0..128). Pairs are found by multi-index hashing: the
128 bits are cut into ``threshold + 1`` pieces, and two codes within the threshold must agree
exactly on at least one piece (pigeonhole), so only images sharing a bucket are compared, in
vectorised numpy. Small sets, or sets where buckets would be too crowded, use a blocked
vectorised all-pairs comparison instead. Both give the same pairs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

_MIH_MIN_FILES = 2048  # below this, all-pairs comparison is as fast as multi-index hashing
_MAX_CANDIDATES = 8_000_000  # per hash piece; beyond this all-pairs comparison is used

_POP8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    b = np.ascontiguousarray(x, dtype=np.uint64)
    return _POP8[b.view(np.uint8)].reshape(*b.shape, 8).sum(axis=-1, dtype=np.uint8)


def _distance(codes: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Flip-aware pHash + dHash distance between rows ``i`` and ``j`` of ``codes``."""
    p, pf, d, df = codes[:, 0], codes[:, 1], codes[:, 2], codes[:, 3]
    nn = _popcount(p[i] ^ p[j]).astype(np.int16) + _popcount(d[i] ^ d[j])
    nf = _popcount(p[i] ^ pf[j]).astype(np.int16) + _popcount(d[i] ^ df[j])
    fn = _popcount(pf[i] ^ p[j]).astype(np.int16) + _popcount(df[i] ^ d[j])
    return np.minimum(np.minimum(nn, nf), fn)


def _pieces(threshold: int) -> list[tuple[int, int, int]]:
    """``threshold + 1`` disjoint bit ranges ``(column, shift, width)`` over pHash and dHash."""
    m = threshold + 1
    m_p = (m + 1) // 2
    out: list[tuple[int, int, int]] = []
    for col, k in ((0, m_p), (2, m - m_p)):
        shift = 0
        for r in range(k):
            width = 64 // k + (1 if r < 64 % k else 0)
            out.append((col, shift, width))
            shift += width
    return out


def _runs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sort order, unique keys, run starts and run lengths of ``keys``."""
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    starts = np.flatnonzero(np.r_[True, sk[1:] != sk[:-1]])
    lengths = np.diff(np.r_[starts, len(sk)])
    return order, sk[starts], starts, lengths


def _pairs_within(order: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """All unordered pairs of members inside each run, vectorised."""
    if len(order) == 0:
        return np.empty((0, 2), np.int64)
    run_of = np.repeat(np.arange(len(starts)), lengths)
    pos = np.arange(len(order))
    count = (starts[run_of] + lengths[run_of]) - pos - 1  # later members of the same run
    total = int(count.sum())
    if total == 0:
        return np.empty((0, 2), np.int64)
    left = np.repeat(pos, count)
    offset = np.arange(total) - np.repeat(np.cumsum(count) - count, count)
    right = left + 1 + offset
    return np.stack([order[left], order[right]], axis=1)


def _pairs_across(
    order_a: np.ndarray,
    starts_a: np.ndarray,
    lengths_a: np.ndarray,
    order_b: np.ndarray,
    starts_b: np.ndarray,
    lengths_b: np.ndarray,
) -> np.ndarray:
    """All (a, b) pairs of members of matching runs (runs given in the same key order)."""
    if len(starts_a) == 0:
        return np.empty((0, 2), np.int64)
    # every member of run r in a pairs with every member of run r in b
    run_of = np.repeat(np.arange(len(starts_a)), lengths_a)
    a_pos = (
        starts_a[run_of]
        + np.arange(len(run_of))
        - np.repeat(np.cumsum(lengths_a) - lengths_a, lengths_a)
    )
    count = lengths_b[run_of]
    total = int(count.sum())
    left = np.repeat(a_pos, count)
    offset = np.arange(total) - np.repeat(np.cumsum(count) - count, count)
    right = np.repeat(starts_b[run_of], count) + offset
    return np.stack([order_a[left], order_b[right]], axis=1)


def _near_pairs_mih(codes: np.ndarray, threshold: int) -> np.ndarray | None:
    """Multi-index hashing; None when buckets are too crowded for it to pay off."""
    n = len(codes)
    found: list[np.ndarray] = []
    for col, shift, width in _pieces(threshold):
        mask = np.uint64((1 << width) - 1)
        kn = (codes[:, col] >> np.uint64(shift)) & mask
        kf = (codes[:, col + 1] >> np.uint64(shift)) & mask
        on, un, sn, ln = _runs(kn)
        of, uf, sf, lf = _runs(kf)
        _, ia, ib = np.intersect1d(un, uf, assume_unique=True, return_indices=True)
        estimate = int((ln * (ln - 1) // 2).sum() + (ln[ia] * lf[ib]).sum())
        if estimate > _MAX_CANDIDATES or estimate > n * n // 4:
            return None
        cand = np.concatenate(
            [_pairs_within(on, sn, ln), _pairs_across(on, sn[ia], ln[ia], of, sf[ib], lf[ib])]
        )
        cand = cand[cand[:, 0] != cand[:, 1]]
        if len(cand) == 0:
            continue
        cand = np.sort(cand, axis=1)
        keep = _distance(codes, cand[:, 0], cand[:, 1]) <= threshold
        found.append(cand[keep])
    if not found:
        return np.empty((0, 2), np.int64)
    allp = np.concatenate(found)
    return np.unique(allp, axis=0) if len(allp) else np.empty((0, 2), np.int64)


def _near_pairs_brute(codes: np.ndarray, threshold: int) -> np.ndarray:
    """Blocked all-pairs comparison, vectorised; memory ~ 4 M distances per block."""
    n = len(codes)
    block = max(1, 4_000_000 // max(n, 1))
    found: list[np.ndarray] = []
    for i0 in range(0, n, block):
        i1 = min(n, i0 + block)
        ii, jj = np.meshgrid(np.arange(i0, i1), np.arange(i0, n), indexing="ij")
        upper = jj > ii
        ii, jj = ii[upper], jj[upper]
        keep = _distance(codes, ii, jj) <= threshold
        if keep.any():
            found.append(np.stack([ii[keep], jj[keep]], axis=1))
    return np.concatenate(found) if found else np.empty((0, 2), np.int64)


def _near_pairs(codes: np.ndarray, threshold: int, method: str = "auto") -> np.ndarray:
    """Pairs ``(i, j)``, ``i < j``, of rows of ``codes`` (n x 4 uint64) within ``threshold``.

    ``method``: "mih" (multi-index hashing, falling back to all-pairs when too crowded),
    "brute" (blocked all-pairs) or "auto" (all-pairs below 2,048 images).
    """
    codes = np.ascontiguousarray(codes, dtype=np.uint64)
    if len(codes) < 2 or threshold < 0:
        return np.empty((0, 2), np.int64)
    if method == "mih" or (method == "auto" and len(codes) >= _MIH_MIN_FILES):
        pairs = _near_pairs_mih(codes, threshold)
        if pairs is not None:
            return pairs
    return _near_pairs_brute(codes, threshold)


def _components(n: int, edges: np.ndarray) -> np.ndarray:
    """Connected-component label of each of ``n`` nodes (union-find over ``edges``)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if len(edges) == 0:
        return np.arange(n)
    graph = coo_matrix((np.ones(len(edges), np.int8), (edges[:, 0], edges[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _equal_edges(values: Sequence[str]) -> np.ndarray:
    """Edges chaining together the rows that share a non-empty value."""
    by: dict[str, list[int]] = defaultdict(list)
    for i, v in enumerate(values):
        if v:
            by[v].append(i)
    edges = [(m[k], m[k + 1]) for m in by.values() if len(m) > 1 for k in range(len(m) - 1)]
    return np.array(edges, dtype=np.int64).reshape(-1, 2)
