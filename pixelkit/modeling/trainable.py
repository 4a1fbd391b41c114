"""Freezing by parameter-name patterns, and a trainable / frozen summary by component.

Stages differ by which parameters train: caption pretraining trains the extractor and LoRA,
trace training adds the point head, and so on. A stage states that as ``fnmatch``
patterns over ``model.named_parameters()`` names, e.g. ``["extractor.*", "*lora_*"]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from torch import nn


def set_trainable(model: nn.Module, trainable: list[str] | None = None,
                  frozen: list[str] | None = None) -> None:
    """Set ``requires_grad`` by name patterns.

    Args:
        model: any module.
        trainable: if given, exactly the parameters matching one of these patterns train
            (all others are frozen); ``None`` keeps the current flags.
        frozen: parameters matching one of these are frozen (applied last, so it wins).

    Raises:
        ValueError: a pattern matches no parameter (a typo would otherwise go unnoticed).
    """
    names = [n for n, _ in model.named_parameters()]
    for pats, what in ((trainable or [], "trainable"), (frozen or [], "frozen")):
        for pat in pats:
            if not any(fnmatchcase(n, pat) for n in names):
                raise ValueError(f"{what} pattern {pat!r} matches no parameter; names look "
                                 f"like {names[:3]} ... ({len(names)} in all)")
    for name, p in model.named_parameters():
        if trainable is not None:
            p.requires_grad_(any(fnmatchcase(name, pat) for pat in trainable))
        if frozen and any(fnmatchcase(name, pat) for pat in frozen):
            p.requires_grad_(False)


@dataclass
class ComponentCount:
    """Parameter counts of one top-level component."""

    component: str
    trainable: int
    frozen: int

    @property
    def total(self) -> int:
        return self.trainable + self.frozen


def parameter_summary(model: nn.Module) -> list[ComponentCount]:
    """Trainable / frozen parameter counts per top-level child, in module order."""
    rows: dict[str, ComponentCount] = {}
    for name, p in model.named_parameters():
        comp = name.split(".", 1)[0]
        row = rows.setdefault(comp, ComponentCount(comp, 0, 0))
        if p.requires_grad:
            row.trainable += p.numel()
        else:
            row.frozen += p.numel()
    return list(rows.values())


def _fmt(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def format_summary(rows: list[ComponentCount]) -> str:
    """A fixed-width table of :func:`parameter_summary` rows with a total line."""
    lines = [f"{'component':<18}{'trainable':>12}{'frozen':>12}{'total':>12}"]
    for r in rows:
        lines.append(f"{r.component:<18}{_fmt(r.trainable):>12}{_fmt(r.frozen):>12}{_fmt(r.total):>12}")
    t = ComponentCount("total", sum(r.trainable for r in rows), sum(r.frozen for r in rows))
    lines.append(f"{t.component:<18}{_fmt(t.trainable):>12}{_fmt(t.frozen):>12}{_fmt(t.total):>12}")
    return "\n".join(lines)


def component_tree(model: nn.Module, depth: int = 2) -> str:
    """The module tree down to ``depth`` levels with parameter counts (trainable / total).

    Works on the meta device (counts need shapes only).
    """
    lines: list[str] = []

    def visit(module: nn.Module, name: str, level: int) -> None:
        params = list(module.parameters())
        total = sum(p.numel() for p in params)
        train = sum(p.numel() for p in params if p.requires_grad)
        label = f"{name} ({type(module).__name__})"
        lines.append(f"{'  ' * level}{label:<{60 - 2 * level}} {_fmt(total):>9}  "
                     f"trainable {_fmt(train):>9}")
        if level + 1 < depth:
            for child_name, child in module.named_children():
                if any(True for _ in child.parameters()):
                    visit(child, child_name, level + 1)

    for child_name, child in model.named_children():
        visit(child, child_name, 0)
    return "\n".join(lines)
