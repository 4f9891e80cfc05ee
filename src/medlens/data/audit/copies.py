"""The copy finder: exact copies, near-identical copies and look-alikes, one definition for all.

The audit, ``medlens split`` and training all call this module, so "a copy" means the same thing
in the report and in the split (``medlens.data.splits`` imports only this module of the audit).

Three tiers
-----------
* **exact**: identical file bytes (SHA-256) or identical decoded pixels.
* **near-identical**: the same picture after an edit -- resized, re-encoded, re-exposed (gain,
  gamma, contrast), mirrored. Two images are *candidates* when their pHash + dHash distance
  (:mod:`.nearsearch`, 0..128 bits, flip-aware) is at most ``near_threshold`` (default 12; two
  thirds of it for images under 64 px, whose hash bits carry less detail). A candidate is
  near-identical only when its fine detail agrees too: the correlation of the band-passed,
  z-scored 64 px thumbnails (best of as-is and mirrored) is at least ``NEAR_DETAIL`` (0.92).
  Hashes alone cannot tell a copy from another image of the same template: on the chest phantoms
  (one rendered anatomy, different patients) hundreds of pairs of *different* images lie within
  distance 3-12 of each other, and chained by union-find they made one group of 555 images.
  Their detail correlation stays below 0.90 (99th percentile 0.79), while copies planted in the
  real folders of ``shared/data`` (brain MRI, blood smears, liver ultrasound: resized 0.5x/1.5x,
  JPEG 40-70, -20 % brightness, +20 % contrast, mirrored) score 0.98 at the 5th percentile; only
  +10 % brightness on bright blood smears, whose white background clips, falls to 0.88-0.90 and
  is reported as a look-alike. Exact and near-identical pairs are chained into groups (union-find)
  that must share a split.
* **look-alike**: a candidate that fails the detail check: possibly the same patient or scan
  (adjacent slices, a re-acquisition), possibly two patients imaged alike. A person decides, so
  look-alikes are reported as *pairs* and never chained transitively (A like B like C is not a
  group); :func:`copy_grouping` ties them into split groups only when asked
  (``group_lookalikes=True``; training asks when the data carry no patient ids), and then
  bounded: only pairs whose detail correlation reaches ``LOOKALIKE_LINK`` (0.80) are tied, the
  closest first, and no tie may make a group larger than ``lookalike_cap(n)`` (2 % of the data,
  at least 10 images); ties refused by the cap are counted and reported. Measured: on 600 chest
  phantoms (one template, 600 patients) all candidates chained make one group of 556 images (of
  600), and 252 even with pairs above 0.70; above 0.80 the largest group has 3 images. On the
  brain MRI folder of ``shared/data`` (5,708 slices, no patient ids; median look-alike detail
  0.82, 98.8 % of pairs within one class) the 0.80 link ties 1,228 pairs and the largest group
  has 50 images (0.9 %).

Limit: small geometric edits (5 % cropped or padded, 3-5 degrees rotated) move pHash + dHash by
25-40 bits, far past any safe threshold, so such copies are not yet found (measured on the
shared folders); finding them needs a search that aligns images, not one more hash.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from medlens.data.audit.nearsearch import _components, _distance, _equal_edges, _near_pairs
from medlens.data.audit.records import (
    THUMB,
    _compute_records,
    _entries,
    _Entry,
    _member,
    _Record,
    _tasks,
    _ticker,
)
from medlens.data.manifest import Manifest

__all__ = [
    "DEFAULT_NEAR_THRESHOLD",
    "LOOKALIKE_LINK",
    "NEAR_DETAIL",
    "CopyGrouping",
    "DuplicateGroup",
    "copy_grouping",
    "duplicate_groups",
    "lookalike_cap",
]

#: pHash + dHash Hamming distance (of 128 bits) at or below which two images are candidates.
DEFAULT_NEAR_THRESHOLD = 12
#: detail correlation at or above which a candidate is the same picture (near-identical).
NEAR_DETAIL = 0.92
#: detail correlation at or above which a look-alike pair is tied into one split group (when
#: look-alikes are grouped): above the 99th percentile of different template phantoms (0.79).
LOOKALIKE_LINK = 0.80
LOOKALIKE_CAP_SHARE = 0.02  # no look-alike tie grows a group past this share of the data...
LOOKALIKE_CAP_MIN = 10  # ...or this many images, whichever is larger
_SMALL_SIDE = 64  # images smaller than this get two thirds of the candidate threshold
_DETAIL_SIGMAS = (0.7, 2.0)  # band-pass (thumbnail pixels): above resampling/JPEG noise,
# below the shared layout of images of one template


@dataclass
class _Found:
    """Copy groups and look-alike pairs over the readable records (positions into them)."""

    exact: list[list[int]]  # components over exact edges
    groups: list[list[int]]  # components over exact + near-identical edges: the copy groups
    edges: np.ndarray  # (m, 2) direct pairs: exact ones first, then near-identical ones
    dist: np.ndarray  # (m,) pHash + dHash distance; 0 for exact pairs
    detail: np.ndarray  # (m,) detail correlation; 1 for exact pairs
    n_exact_edges: int
    lookalike: np.ndarray = field(default_factory=lambda: np.empty((0, 2), np.int64))
    lookalike_dist: np.ndarray = field(default_factory=lambda: np.empty(0, np.int16))
    lookalike_detail: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))


def _small_threshold(threshold: int) -> int:
    return (2 * threshold) // 3


def _detail_vectors(thumbs: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Unit-norm high-passed, z-scored thumbnails, as is and mirrored (n x THUMB^2 each).

    z-scoring removes gain and offset (re-exposure); the band-pass (difference of Gaussians,
    sigma 0.7 and 2 px) drops the shared layout of images of one template and the pixel-level
    noise that resampling and JPEG change, and keeps what makes an image itself: texture and
    small structure.
    """
    from scipy.ndimage import gaussian_filter

    if not thumbs:
        empty = np.zeros((0, THUMB * THUMB), np.float32)
        return empty, empty
    t = np.stack([np.frombuffer(b, np.uint8).reshape(THUMB, THUMB) for b in thumbs])
    t = t.astype(np.float32)
    t -= t.mean(axis=(1, 2), keepdims=True)
    t /= t.std(axis=(1, 2), keepdims=True) + 1e-6
    lo, hi = _DETAIL_SIGMAS
    t = gaussian_filter(t, sigma=(0, lo, lo), mode="reflect") - gaussian_filter(
        t, sigma=(0, hi, hi), mode="reflect"
    )

    def unit(a: np.ndarray) -> np.ndarray:
        flat = a.reshape(len(a), -1)
        return flat / (np.linalg.norm(flat, axis=1, keepdims=True) + 1e-6)

    return unit(t), unit(t[:, :, ::-1])


def _detail(recs: Sequence[_Record], pairs: np.ndarray) -> np.ndarray:
    """Detail correlation of each pair (best of as-is and one mirrored)."""
    if len(pairs) == 0:
        return np.empty(0, np.float32)
    used = np.unique(pairs)
    pos = {int(i): k for k, i in enumerate(used)}
    vec, mir = _detail_vectors([recs[int(i)].thumb for i in used])
    a = np.array([pos[int(i)] for i in pairs[:, 0]])
    b = np.array([pos[int(i)] for i in pairs[:, 1]])
    same = np.einsum("ij,ij->i", vec[a], vec[b])
    flipped = np.einsum("ij,ij->i", vec[a], mir[b])
    return np.maximum(same, flipped).astype(np.float32)


def _find_copies(recs: Sequence[_Record], threshold: int) -> _Found:
    """Exact, near-identical (chained into groups) and look-alike (pairs only) copies."""
    n = len(recs)
    exact_edges = np.concatenate(
        [_equal_edges([r.sha256 for r in recs]), _equal_edges([r.pixels for r in recs])]
    )
    sharp = np.array([i for i, r in enumerate(recs) if not r.flat], dtype=np.int64)
    codes = np.array(
        [[recs[i].phash, recs[i].phash_f, recs[i].dhash, recs[i].dhash_f] for i in sharp],
        dtype=np.uint64,
    ).reshape(-1, 4)
    near = _near_pairs(codes, threshold)
    near_dist = _distance(codes, near[:, 0], near[:, 1]) if len(near) else np.empty(0, np.int16)
    if len(near):  # tiny images carry less detail per hash bit: a stricter threshold for them
        small = np.array([min(recs[i].width, recs[i].height) < _SMALL_SIDE for i in sharp])
        limit = np.where(small, _small_threshold(threshold), threshold)
        keep = near_dist <= np.minimum(limit[near[:, 0]], limit[near[:, 1]])
        near, near_dist = near[keep], near_dist[keep]
    cand = sharp[near] if len(near) else np.empty((0, 2), np.int64)
    detail = _detail(recs, cand)
    same = detail >= NEAR_DETAIL
    exact_ids = {(int(a), int(b)) for a, b in exact_edges.tolist()}

    def comps(edges: np.ndarray) -> list[list[int]]:
        labels = _components(n, edges)
        members: dict[int, list[int]] = defaultdict(list)
        for i, lab in enumerate(labels):
            members[int(lab)].append(i)
        return [m for m in members.values() if len(m) > 1]

    edges = np.concatenate([exact_edges, cand[same]])
    groups = comps(edges)
    group_of = np.full(n, -1, np.int64)
    for gid, members in enumerate(groups):
        group_of[members] = gid
    # a look-alike pair already joined by copies (or identical) says nothing new
    look = ~same
    if look.any():
        ga, gb = group_of[cand[:, 0]], group_of[cand[:, 1]]
        look &= ~((ga == gb) & (ga >= 0))
        look &= np.array([(int(a), int(b)) not in exact_ids for a, b in cand.tolist()], bool)
    return _Found(
        exact=comps(exact_edges),
        groups=groups,
        edges=edges,
        dist=np.concatenate([np.zeros(len(exact_edges), np.int16), near_dist[same]]).astype(
            np.int16
        ),
        detail=np.concatenate([np.ones(len(exact_edges), np.float32), detail[same]]),
        n_exact_edges=len(exact_edges),
        lookalike=cand[look],
        lookalike_dist=near_dist[look].astype(np.int16),
        lookalike_detail=detail[look],
    )


@dataclass
class DuplicateGroup:
    """Files that are copies of one another: exact (bytes or pixels) or near-identical.

    ``kind`` is "exact" (identical bytes), "pixels" (identical decoded pixels) -- both the
    **exact** tier -- or "near" (the **near-identical** tier: at least one pair is an edited copy).

    ``members`` are dicts with ``path``, ``key``, ``label``, ``split``, ``folder`` ("data" or
    "against") and ``patient_id``.
    """

    id: int
    kind: Literal["exact", "pixels", "near"]
    members: list[dict[str, Any]]
    #: direct pairs (not chains) whose labels differ: path/label of each, kind and distance
    conflicts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def tier(self) -> Literal["exact", "near-identical"]:
        return "exact" if self.kind in ("exact", "pixels") else "near-identical"

    @property
    def labels(self) -> list[str]:
        return sorted({str(m["label"]) for m in self.members})

    @property
    def splits(self) -> list[str]:
        return sorted({m["split"] for m in self.members if m["split"]})

    @property
    def folders(self) -> list[str]:
        return sorted({m["folder"] for m in self.members})

    @property
    def cross_class(self) -> bool:
        """Two directly matched members (not only a chain of look-alikes) differ in label."""
        return bool(self.conflicts)

    @property
    def mixed_labels(self) -> bool:
        """Members carry several labels, possibly only through a chain of look-alikes."""
        return len(self.labels) > 1

    @property
    def cross_split(self) -> bool:
        return len(self.splits) > 1

    @property
    def cross_folder(self) -> bool:
        return len(self.folders) > 1

    @property
    def paths(self) -> list[str]:
        return [m["path"] for m in self.members]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "tier": self.tier,
            "size": len(self.members),
            "labels": self.labels,
            "splits": self.splits,
            "folders": self.folders,
            "cross_class": self.cross_class,
            "mixed_labels": self.mixed_labels,
            "cross_split": self.cross_split,
            "cross_folder": self.cross_folder,
            "members": self.members,
            "conflicts": self.conflicts,
        }


def _group_kind(recs: Sequence[_Record]) -> Literal["exact", "pixels", "near"]:
    if recs[0].sha256 and all(r.sha256 == recs[0].sha256 for r in recs):
        return "exact"
    if all(r.pixels == recs[0].pixels for r in recs):
        return "pixels"
    return "near"


def _build_groups(
    comps: list[list[int]],
    ok: Sequence[int],
    recs: Sequence[_Record],
    entries: Sequence[_Entry],
    found: _Found | None = None,
) -> list[DuplicateGroup]:
    """Groups ordered by their first member's key, numbered from 0.

    With ``found``, each group also lists its direct pairs (exact or near-identical, never a
    chain) whose labels differ.
    """
    built = []
    for comp in comps:
        idx = sorted((ok[i] for i in comp), key=lambda e: (entries[e].folder, entries[e].key))
        built.append((idx, _group_kind([recs[i] for i in idx])))
    built.sort(key=lambda t: (entries[t[0][0]].folder, entries[t[0][0]].key))
    groups = [
        DuplicateGroup(gid, kind, [_member(entries[i]) for i in idx])
        for gid, (idx, kind) in enumerate(built)
    ]
    if found is not None:
        gid_of = {i: gid for gid, (idx, _) in enumerate(built) for i in idx}
        for n, (a, b) in enumerate(found.edges.tolist()):
            ea, eb = entries[ok[a]], entries[ok[b]]
            if ea.sample.label == eb.sample.label:
                continue
            exact = n < found.n_exact_edges
            groups[gid_of[ok[a]]].conflicts.append(
                {
                    "a": _member(ea)["path"],
                    "label_a": ea.sample.label,
                    "b": _member(eb)["path"],
                    "label_b": eb.sample.label,
                    "kind": "exact" if exact else "near",
                    "distance": int(found.dist[n]),
                    "detail": round(float(found.detail[n]), 3),
                }
            )
    return groups


def _copies_map(groups: Sequence[DuplicateGroup], folder: str = "data") -> dict[str, int]:
    out: dict[str, int] = {}
    for g in groups:
        mine = [m for m in g.members if m["folder"] == folder]
        if len(mine) > 1:
            for m in mine:
                out[m["key"]] = g.id
    return out


def _lookalike_pairs(
    found: _Found, ok: Sequence[int], entries: Sequence[_Entry]
) -> list[dict[str, Any]]:
    """Look-alike pairs as dicts (closest first), each side with its label, folder and split."""
    out = []
    for (a, b), d, c in zip(
        found.lookalike.tolist(),
        found.lookalike_dist.tolist(),
        found.lookalike_detail.tolist(),
        strict=True,
    ):
        ea, eb = entries[ok[a]], entries[ok[b]]
        if (eb.folder, eb.key) < (ea.folder, ea.key):
            ea, eb = eb, ea
        ma, mb = _member(ea), _member(eb)
        out.append(
            {
                "a": ma["path"],
                "key_a": ma["key"],
                "label_a": ma["label"],
                "folder_a": ma["folder"],
                "split_a": ma["split"],
                "b": mb["path"],
                "key_b": mb["key"],
                "label_b": mb["label"],
                "folder_b": mb["folder"],
                "split_b": mb["split"],
                "distance": int(d),
                "detail": round(float(c), 3),
            }
        )
    out.sort(key=lambda p: (p["distance"], -p["detail"], p["key_a"], p["key_b"]))
    return out


def lookalike_cap(n: int) -> int:
    """The largest group look-alike ties may build in a data set of ``n`` images."""
    return max(LOOKALIKE_CAP_MIN, int(np.ceil(LOOKALIKE_CAP_SHARE * n)))


@dataclass
class CopyGrouping:
    """What a split must keep together, and what the look-alike ties did.

    ``copies``: exact and near-identical copy groups only (what a leakage check refuses to see
    cross splits). ``groups``: ``copies`` plus the bounded look-alike ties (what a split keeps
    together; equal to ``copies`` when look-alikes are not grouped). ``info``: counts for the
    run's report (JSON-ready).
    """

    copies: dict[str, int]
    groups: dict[str, int]
    info: dict[str, Any]


def _bounded_ties(
    n: int, copy_edges: np.ndarray, links: np.ndarray, order: np.ndarray, cap: int
) -> tuple[np.ndarray, int, int, set[int]]:
    """Union-find: copy edges unbounded, then look-alike ``links`` in ``order`` (closest
    first), each refused when it would make a group larger than ``cap``.

    Returns (root of each item, ties made, ties refused, items of refused ties).
    """
    parent = np.arange(n)
    size = np.ones(n, np.int64)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    def union(a: int, b: int) -> None:
        if size[a] < size[b]:
            a, b = b, a
        parent[b] = a
        size[a] += size[b]

    for a, b in copy_edges.tolist():
        ra, rb = find(a), find(b)
        if ra != rb:
            union(ra, rb)
    made, refused, touched = 0, 0, set()
    for k in order.tolist():
        ra, rb = find(int(links[k, 0])), find(int(links[k, 1]))
        if ra == rb:
            continue
        if size[ra] + size[rb] > cap:
            refused += 1
            touched.update((int(links[k, 0]), int(links[k, 1])))
            continue
        union(ra, rb)
        made += 1
    return np.array([find(i) for i in range(n)]), made, refused, touched


def copy_grouping(
    manifest: Manifest,
    near_threshold: int = DEFAULT_NEAR_THRESHOLD,
    *,
    progress: bool | Callable[[int, int], None] = False,
    workers: int | None = None,
    group_lookalikes: bool = False,
) -> CopyGrouping:
    """Copy groups, and with ``group_lookalikes`` the bounded look-alike ties on top of them.

    Copies (exact, and near-identical within ``near_threshold``) are chained without bound, as
    the audit chains them. Look-alike ties use the audit's candidates (within the larger of
    ``near_threshold`` and ``DEFAULT_NEAR_THRESHOLD``) whose detail correlation reaches
    ``LOOKALIKE_LINK``, strongest first, and never grow a group past :func:`lookalike_cap`:
    the chain of template look-alikes that made 556 of 600 phantoms one group cannot happen.
    """
    entries = _entries(manifest, {}, None)
    recs = _compute_records(_tasks(entries, None), workers, _ticker(progress, len(entries), "hash"))
    ok = [i for i, r in enumerate(recs) if r.ok]
    okrecs = [recs[i] for i in ok]
    info: dict[str, Any] = {"lookalikes_grouped": bool(group_lookalikes)}
    if not group_lookalikes:
        found = _find_copies(okrecs, near_threshold)
        copies = _copies_map(_build_groups(found.groups, ok, recs, entries))
        info["images_in_copy_groups"] = len(copies)
        return CopyGrouping(copies, copies, info)
    wide = max(near_threshold, DEFAULT_NEAR_THRESHOLD)
    found = _find_copies(okrecs, wide)
    n = len(ok)
    is_copy = np.arange(len(found.edges)) < found.n_exact_edges
    is_copy |= found.dist <= near_threshold
    copy_edges = found.edges[is_copy]
    labels = _components(n, copy_edges)
    members: dict[int, list[int]] = defaultdict(list)
    for i, lab in enumerate(labels):
        members[int(lab)].append(i)
    copies = _copies_map(
        _build_groups([m for m in members.values() if len(m) > 1], ok, recs, entries)
    )
    # look-alike links: near pairs beyond near_threshold, and look-alikes above the link
    strong = found.lookalike_detail >= LOOKALIKE_LINK
    links = np.concatenate([found.edges[~is_copy], found.lookalike[strong]]).astype(np.int64)
    detail = np.concatenate([found.detail[~is_copy], found.lookalike_detail[strong]])
    dist = np.concatenate([found.dist[~is_copy], found.lookalike_dist[strong]])
    order = np.lexsort((dist, -detail))  # highest detail first, then the closest hashes
    cap = lookalike_cap(n)
    roots, made, refused, touched = _bounded_ties(n, copy_edges, links, order, cap)
    comp: dict[int, list[int]] = defaultdict(list)
    for i, r in enumerate(roots.tolist()):
        comp[r].append(i)
    comps = [m for m in comp.values() if len(m) > 1]
    groups = _copies_map(_build_groups(comps, ok, recs, entries))
    in_copy = {k for k in copies}
    tied = [k for k in groups if k not in in_copy]
    info.update(
        {
            "link_detail": LOOKALIKE_LINK,
            "candidate_threshold": wide,
            "cap": cap,
            "lookalike_pairs": len(found.lookalike),
            "pairs_below_link": int((~strong).sum()),
            "ties_made": made,
            "ties_refused": refused,
            "images_in_refused_ties": len(touched),
            "images_in_copy_groups": len(copies),
            "images_tied_by_lookalikes": len(tied),
            "images_grouped": len(groups),
            "largest_group": max((len(m) for m in comps), default=1),
        }
    )
    return CopyGrouping(copies, groups, info)


def duplicate_groups(
    manifest: Manifest,
    near_threshold: int = DEFAULT_NEAR_THRESHOLD,
    *,
    progress: bool | Callable[[int, int], None] = False,
    workers: int | None = None,
    group_lookalikes: bool = False,
) -> dict[str, int]:
    """``manifest.key(sample)`` -> group id for every sample with an exact or near-identical copy.

    The same tiers as :func:`medlens.data.audit.audit`. Samples without a copy (and unreadable
    files) are absent. Pass the result to ``make_splits(..., copies=...)`` so that every copy
    lands in its original's split. ``group_lookalikes=True`` also ties look-alike pairs together,
    bounded as :func:`copy_grouping` says, for data where look-alikes are likely one patient.
    """
    return copy_grouping(
        manifest,
        near_threshold,
        progress=progress,
        workers=workers,
        group_lookalikes=group_lookalikes,
    ).groups
