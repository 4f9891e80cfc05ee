"""A weighted soft-voting ensemble that is itself a registered model, and so itself a bundle.

Soft voting averages the members' class *probabilities* (not their logits: members trained with
different losses or temperatures put their logits on different scales). The ensemble's forward
returns ``log(sum_i w_i * softmax(member_i(x)))``, so everything downstream that expects logits
(the Predictor's softmax, temperature scaling, metrics, CAMs) works unchanged, and
``softmax(forward(x))`` is exactly the weighted mean of the members' probabilities.

Why it is a registry model (``"soft_voting"``) rather than a wrapper around several bundles: a
bundle rebuilds its network from ``(name, num_classes, in_chans, kwargs)`` and loads one state
dict strictly. With the members' registry names and kwargs in ``kwargs["members"]`` and the
weights both in ``kwargs["weights"]`` and in a persistent buffer, a saved ensemble rebuilds to the
same members and weights from its one ``model.safetensors``, hashed and verified like any bundle.
When spec and buffer disagree the buffer (the state dict) wins; :meth:`SoftVotingEnsemble.model_spec`
writes the spec from the current buffer so they never do.

Typical use: train each member on its own, :func:`from_members` to assemble them, fit the weights
on the validation split with :func:`fit_ensemble_weights`, :meth:`SoftVotingEnsemble.set_weights`,
then save the bundle with ``model_spec=ensemble.model_spec(num_classes, in_chans)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medlens.errors import MedlensError
from medlens.models.registry import create_model, model_info, register_model, tag_model

__all__ = ["SoftVotingEnsemble", "fit_ensemble_weights", "from_members", "normalise_weights"]

_EPS = 1e-12
# create_model's own arguments: a member's kwargs must not repeat them (the ensemble sets them).
_RESERVED = ("num_classes", "in_chans", "pretrained")


def normalise_weights(weights: Sequence[float] | np.ndarray | None, n_members: int) -> list[float]:
    """Non-negative weights scaled to sum to 1 (``None``: equal). Errors name ``ensemble.weights``."""
    if n_members < 1:
        raise MedlensError("ensemble.members: an ensemble needs at least one member")
    if weights is None:
        return [1.0 / n_members] * n_members
    try:
        w = np.asarray([float(v) for v in weights], dtype=np.float64)
    except (TypeError, ValueError):
        raise MedlensError(
            f"ensemble.weights: must be a list of numbers, got {weights!r}"
        ) from None
    if w.size != n_members:
        raise MedlensError(
            f"ensemble.weights: {w.size} weight(s) given for {n_members} member(s); give one per "
            "member, in the members' order (or leave weights unset for equal weights)"
        )
    if not np.isfinite(w).all():
        raise MedlensError(f"ensemble.weights: weights must be finite, got {w.tolist()}")
    if (w < 0).any():
        raise MedlensError(f"ensemble.weights: weights must be non-negative, got {w.tolist()}")
    total = float(w.sum())
    if total <= 0:
        raise MedlensError("ensemble.weights: all weights are zero; at least one must be positive")
    return (w / total).tolist()


def _declared_classes(model: nn.Module) -> int | None:
    """The class count a member announces without running it (None when it cannot tell).

    timm models and SmallCNN carry ``num_classes``; multi-head models are read at the head named
    by ``primary``, whose ``get_classifier`` is a Linear. Anything else is checked at forward.
    """
    if getattr(model, "primary", None) is None:
        n = getattr(model, "num_classes", None)
        if isinstance(n, int) and n > 0:
            return n
    get = getattr(model, "get_classifier", None)
    if callable(get):
        try:
            head = get()
        except (AttributeError, TypeError, KeyError):
            return None
        out = getattr(head, "out_features", None)
        if isinstance(out, int) and out > 0:
            return out
    return None


class SoftVotingEnsemble(nn.Module):
    """Weighted mean of member probabilities, returned as log-probabilities (see module doc).

    ``members`` (an ``nn.ModuleList``) are the networks, ``names`` their registry names (needed to
    rebuild them from a bundle), ``labels`` their display names (unique, for per-model reports),
    ``member_kwargs`` their registry kwargs. The normalised weights live in the persistent buffer
    ``member_weights`` (so the state dict carries them) and are reported by :attr:`weights`.
    """

    member_weights: torch.Tensor

    def __init__(
        self,
        members: Sequence[nn.Module],
        names: Sequence[str],
        weights: Sequence[float] | np.ndarray | None = None,
        labels: Sequence[str | None] | None = None,
        member_kwargs: Sequence[dict[str, Any]] | None = None,
        num_classes: int | None = None,
        in_chans: int | None = None,
    ) -> None:
        super().__init__()
        members = list(members)
        if not members:
            raise MedlensError("ensemble.members: an ensemble needs at least one member")
        if len(names) != len(members):
            raise MedlensError(
                f"ensemble.members: {len(names)} name(s) given for {len(members)} model(s)"
            )
        if member_kwargs is not None and len(member_kwargs) != len(members):
            raise MedlensError(
                f"ensemble.members: {len(member_kwargs)} kwargs given for {len(members)} model(s)"
            )
        if labels is not None and len(labels) != len(members):
            raise MedlensError(
                f"ensemble.members: {len(labels)} label(s) given for {len(members)} model(s)"
            )
        self.members = nn.ModuleList(members)
        self.names = [str(n) for n in names]
        self.labels = _unique_labels(self.names, labels)
        self.member_kwargs = [dict(k) for k in (member_kwargs or [{} for _ in members])]
        w = normalise_weights(weights, len(members))
        self.register_buffer("member_weights", torch.tensor(w, dtype=torch.float32))
        declared = {lab: _declared_classes(m) for lab, m in zip(self.labels, members, strict=True)}
        known = {lab: k for lab, k in declared.items() if k is not None}
        if num_classes is not None:
            known = {"<ensemble num_classes>": int(num_classes), **known}
        if len(set(known.values())) > 1:
            raise MedlensError(
                f"ensemble.members: every member must predict the same classes; class counts: "
                f"{known}"
            )
        self.num_classes = next(iter(known.values()), None)
        self.in_chans = in_chans

    @property
    def weights(self) -> list[float]:
        """The normalised member weights, in member order."""
        return [float(v) for v in self.member_weights.detach().cpu()]

    def set_weights(self, weights: Sequence[float] | np.ndarray) -> None:
        """Replace the weights (e.g. with :func:`fit_ensemble_weights` on validation)."""
        w = normalise_weights(weights, len(self.members))
        self.member_weights.copy_(torch.tensor(w, dtype=torch.float32))

    def _member_logits(self, i: int, x: torch.Tensor) -> torch.Tensor:
        member = self.members[i]
        out = member(x)
        if isinstance(out, dict):
            # Multi-head members (medlens' multitask / fusion models) name their class head.
            primary = getattr(member, "primary", None)
            if primary is None or primary not in out:
                raise MedlensError(
                    f"ensemble.members: member {self.labels[i]!r} returns outputs "
                    f"{sorted(map(str, out))} but no `primary` head to vote with"
                )
            out = out[primary]
        if not isinstance(out, torch.Tensor) or out.ndim != 2:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise MedlensError(
                f"ensemble.members: member {self.labels[i]!r} must return N x K logits, got {shape}"
            )
        return out

    def member_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Per-member class probabilities, ``M x N x K`` (member order = :attr:`labels`)."""
        probs = [torch.softmax(self._member_logits(i, x).float(), dim=1) for i in range(len(self))]
        ks = {p.shape[1] for p in probs}
        if len(ks) > 1 or (self.num_classes is not None and ks != {self.num_classes}):
            counts = {lab: int(p.shape[1]) for lab, p in zip(self.labels, probs, strict=True)}
            raise MedlensError(
                f"ensemble.members: every member must predict the same classes; got {counts}"
                + (f" (ensemble: {self.num_classes})" if self.num_classes is not None else "")
            )
        return torch.stack(probs, dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = self.member_probabilities(x)
        w = self.member_weights.to(probs.dtype)
        mean = torch.einsum("m,mnk->nk", w, probs)
        return torch.log(mean.clamp_min(_EPS))

    def __len__(self) -> int:
        return len(self.members)

    def dominant_member(self) -> int:
        """Index of the highest-weight member (the first one on ties)."""
        return int(torch.argmax(self.member_weights).item())

    def member_specs(self) -> list[dict[str, Any]]:
        """The ``members`` kwarg that rebuilds these members through the registry."""
        return [
            {"name": n, "kwargs": dict(k), "label": lab}
            for n, k, lab in zip(self.names, self.member_kwargs, self.labels, strict=True)
        ]

    def model_spec(
        self, num_classes: int | None = None, in_chans: int | None = None
    ) -> dict[str, Any]:
        """The bundle ``model_spec`` that rebuilds this ensemble, current weights included."""
        k = num_classes if num_classes is not None else self.num_classes
        c = in_chans if in_chans is not None else self.in_chans
        if k is None or c is None:
            raise MedlensError(
                "ensemble.members: num_classes and in_chans are unknown for this ensemble; pass "
                "them to model_spec()"
            )
        return {
            "name": "soft_voting",
            "num_classes": int(k),
            "in_chans": int(c),
            "kwargs": {"members": self.member_specs(), "weights": self.weights},
        }


def _unique_labels(names: Sequence[str], labels: Sequence[str | None] | None) -> list[str]:
    """Display names: the given label or the registry name, suffixed ``#2``, ``#3`` on repeats."""
    raw = [(lab or n) for n, lab in zip(names, labels or [None] * len(names), strict=True)]
    out: list[str] = []
    for lab in raw:
        cand, j = lab, 2
        while cand in out:
            cand, j = f"{lab}#{j}", j + 1
        out.append(cand)
    return out


def from_members(
    models: Sequence[nn.Module],
    names: Sequence[str],
    weights: Sequence[float] | np.ndarray | None = None,
    *,
    labels: Sequence[str | None] | None = None,
    member_kwargs: Sequence[dict[str, Any]] | None = None,
    num_classes: int | None = None,
    in_chans: int | None = None,
) -> SoftVotingEnsemble:
    """Assemble already-trained members (each trained separately) into one ensemble.

    ``names`` are the members' registry names and ``member_kwargs`` their registry kwargs: with
    them :meth:`SoftVotingEnsemble.model_spec` writes a spec from which a bundle rebuilds the same
    architecture; the weights themselves travel in the state dict.
    """
    ensemble = SoftVotingEnsemble(
        models, names, weights, labels, member_kwargs, num_classes=num_classes, in_chans=in_chans
    )
    return tag_model(ensemble, "soft_voting")


@register_model("soft_voting", kind="ensemble", cam="member")
def soft_voting(
    num_classes: int,
    in_chans: int = 3,
    pretrained: bool | str | Path = False,
    members: list[dict[str, Any]] | None = None,
    weights: list[float] | None = None,
) -> SoftVotingEnsemble:
    """Build an ensemble from member specs ``{"name", "kwargs", "label"}`` (see module doc).

    Members are built untrained (``pretrained=False``): an ensemble gets its weights from its
    separately trained members (:func:`from_members`) or from its bundle, never from a hub.
    """
    if pretrained:
        raise MedlensError(
            "model.pretrained: a soft_voting ensemble loads no pretrained weights; train its "
            "members, assemble them with from_members(), or load its bundle (set pretrained false)"
        )
    if not members:
        raise MedlensError(
            'ensemble.members: list the members, e.g. [{"name": "resnet18", "kwargs": {}}]'
        )
    built: list[nn.Module] = []
    names: list[str] = []
    labels: list[str | None] = []
    kwargs_list: list[dict[str, Any]] = []
    for i, spec in enumerate(members):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise MedlensError(
                f"ensemble.members[{i}]: expected {{'name': <model>, 'kwargs': {{...}}}}, "
                f"got {spec!r}"
            )
        if unknown := sorted(set(spec) - {"name", "kwargs", "label"}):
            raise MedlensError(f"ensemble.members[{i}]: unknown key(s) {unknown}")
        kw = dict(spec.get("kwargs") or {})
        if clash := sorted(set(kw) & set(_RESERVED)):
            raise MedlensError(
                f"ensemble.members[{i}].kwargs: {clash} are set by the ensemble, not per member"
            )
        if model_info(spec["name"], strict=False).kind == "ensemble":
            raise MedlensError(f"ensemble.members[{i}]: an ensemble cannot contain an ensemble")
        built.append(create_model(spec["name"], num_classes, in_chans, pretrained=False, **kw))
        names.append(spec["name"])
        labels.append(spec.get("label"))
        kwargs_list.append(kw)
    return SoftVotingEnsemble(
        built, names, weights, labels, kwargs_list, num_classes=num_classes, in_chans=in_chans
    )


def fit_ensemble_weights(member_probs: np.ndarray, y: np.ndarray, l2: float = 1e-3) -> np.ndarray:
    """Simplex weights minimising the negative log-likelihood of the weighted mean probability.

    Fit these on the VALIDATION split only, never on test: weights chosen on the test set make
    every test metric of the ensemble optimistic. ``member_probs`` is ``M x N x K`` (e.g.
    ``ensemble.member_probabilities`` on validation images), ``y`` the ``N`` true class indices.

    The weights are ``softmax(theta)``, optimised by L-BFGS-B (scipy) from ``theta = 0`` (equal
    weights), so the result is deterministic. ``l2 * sum((w - 1/M)**2)`` pulls towards equal
    weights: on a tiny validation set the likelihood alone can pile all the weight on one member
    that happened to fit those few cases.
    """
    from scipy.optimize import minimize

    p = np.asarray(member_probs, dtype=np.float64)
    labels = np.asarray(y)
    if p.ndim != 3:
        raise MedlensError(f"ensemble.weights: member_probs must be M x N x K, got {p.shape}")
    m, n, k = p.shape
    if labels.shape != (n,) or n == 0:
        raise MedlensError(f"ensemble.weights: y must hold {n} labels (N > 0), got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= k:
        raise MedlensError(f"ensemble.weights: y must hold class indices in 0..{k - 1}")
    if l2 < 0:
        raise MedlensError(f"ensemble.weights: l2 must be >= 0, got {l2}")
    if m == 1:
        return np.ones(1)
    p_true = p[:, np.arange(n), labels]  # M x N: each member's probability of the true class
    prior = np.full(m, 1.0 / m)

    def loss_and_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        z = np.exp(theta - theta.max())
        w = z / z.sum()
        mix = np.maximum(w @ p_true, _EPS)
        loss = -float(np.mean(np.log(mix))) + l2 * float(np.sum((w - prior) ** 2))
        grad_w = -(p_true / mix).mean(axis=1) + 2.0 * l2 * (w - prior)
        grad_theta = w * (grad_w - float(w @ grad_w))  # Jacobian of softmax: diag(w) - w w^T
        return loss, grad_theta

    res = minimize(loss_and_grad, np.zeros(m), jac=True, method="L-BFGS-B")
    z = np.exp(res.x - res.x.max())
    return z / z.sum()
