"""Weighted draws from a service's served instances (RFC 2782 selection). Pure.

A :class:`Pool` holds the instances answering one record type, grouped by
priority, with running weight totals for bisection. It is patched one
instance at a time (:meth:`Pool.add`, :meth:`Pool.remove`) so a change of a
50 000-instance service costs O(1) here, and drawn from in O(k log n) for k
records, so a query's cost follows the size of its reply.
"""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field

from dnsreg.core.model import Instance

# A group this much larger than the draw is sampled by bisection instead of shuffled whole.
SHUFFLE_FACTOR = 4
SHUFFLE_MIN = 64


@dataclass(slots=True)
class Group:
    """Instances of one priority, with running weight totals for bisection.

    Kept patchable: an instance comes in at the end and leaves by swapping the
    last one into its place, so one change costs O(1) here (the order within a
    group carries no meaning: every draw is random). The running totals are
    redone lazily, in C (``accumulate`` over plain ints), by the first draw that
    bisects them after a change.
    """

    priority: int
    instances: list[Instance] = field(default_factory=list)
    weights: list[int] = field(default_factory=list)
    at: dict[str, int] = field(default_factory=dict)  # id -> index in ``instances``
    _cumulative: list[int] | None = None
    # How many members have each weight: one weight for all (the common case) makes a
    # weighted draw a uniform one, which ``random.sample`` does 3x faster than bisection.
    weight_counts: Counter[int] = field(default_factory=Counter)

    @property
    def cumulative(self) -> list[int]:
        if self._cumulative is None:
            self._cumulative = list(itertools.accumulate(self.weights))
        return self._cumulative

    @property
    def total(self) -> int:
        return self.cumulative[-1]

    def add(self, instance: Instance) -> None:
        self.at[instance.reg.id] = len(self.instances)
        self.instances.append(instance)
        self.weights.append(instance.reg.weight)
        self.weight_counts[instance.reg.weight] += 1
        self._cumulative = None

    def remove(self, instance_id: str) -> None:
        index = self.at.pop(instance_id)
        _decrement(self.weight_counts, self.weights[index])
        last, weight = self.instances.pop(), self.weights.pop()
        if index < len(self.instances):
            self.instances[index] = last
            self.weights[index] = weight
            self.at[last.reg.id] = index
        self._cumulative = None


@dataclass(slots=True)
class Pool:
    """The served instances answering one record type, lowest priority first."""

    base_rr: int  # octets of an answer record of this pool, but the instance id's
    by_id: bool  # the id is in the record (SRV target): its length counts too
    groups: list[Group] = field(default_factory=list)
    count: int = 0
    ttls: Counter[int] = field(default_factory=Counter)
    id_lengths: Counter[int] = field(default_factory=Counter)

    @property
    def ttl(self) -> int:
        """RFC 2181 §5.2: one TTL for the RRset, the smallest of its instances."""
        return min(self.ttls) if self.ttls else 0

    @property
    def min_rr(self) -> int:
        """Octets of the smallest record of this pool in an answer."""
        if not self.by_id:
            return self.base_rr
        return self.base_rr + (min(self.id_lengths) if self.id_lengths else 1)

    def fill(self, instances: Collection[Instance]) -> None:
        """An empty pool filled in bulk (see :meth:`extend`)."""
        self.extend(list(instances))

    def extend(self, instances: list[Instance]) -> None:
        """Instances not in the pool yet, added in bulk: list-speed passes, no call per
        instance when they share one priority (the common case)."""
        if not instances:
            return
        regs = [i.reg for i in instances]
        priority = regs[0].priority
        if any(r.priority != priority for r in regs):
            for instance in instances:
                self.add(instance)
            return
        for group in self.groups:
            if group.priority == priority:
                break
        else:
            group = Group(priority)
            self.groups.append(group)
            self.groups.sort(key=lambda g: g.priority)
        base = len(group.instances)
        group.instances.extend(instances)
        weights = [r.weight for r in regs]
        group.weights.extend(weights)
        group.weight_counts.update(weights)
        group.at.update(zip([r.id for r in regs], range(base, base + len(regs)), strict=True))
        group._cumulative = None
        self.count += len(regs)
        self.ttls.update([r.dns_ttl for r in regs])
        if self.by_id:
            self.id_lengths.update([len(r.id) for r in regs])

    def add(self, instance: Instance) -> None:
        reg = instance.reg
        groups = self.groups
        for group in groups:
            if group.priority == reg.priority:
                break
        else:
            group = Group(reg.priority)
            groups.append(group)
            groups.sort(key=lambda g: g.priority)
        group.add(instance)
        self.count += 1
        self.ttls[reg.dns_ttl] += 1
        if self.by_id:
            self.id_lengths[len(reg.id)] += 1

    def remove(self, instance: Instance) -> None:
        reg = instance.reg
        for group in self.groups:
            if group.priority == reg.priority:
                group.remove(reg.id)
                if not group.instances:
                    self.groups.remove(group)
                break
        self.count -= 1
        _decrement(self.ttls, reg.dns_ttl)
        if self.by_id:
            _decrement(self.id_lengths, len(reg.id))

    def draw(self, k: int, rng: random.Random) -> list[Instance]:
        """Up to ``k`` instances: lower priority first, weighted random within one.

        Draws without replacement with probability proportional to weight
        (RFC 2782's selection, applied to A/AAAA clients too). A group at most
        a few times larger than the draw is ordered whole by Efraimidis–Spirakis
        keys (u^(1/w)); a far larger one is sampled by bisecting the
        cumulative weights, rejecting repeats, so the cost is O(k log n).
        """
        out: list[Instance] = []
        for group in self.groups:
            need = k - len(out)
            if need <= 0:
                break
            members = group.instances
            if len(members) <= SHUFFLE_FACTOR * need + SHUFFLE_MIN:
                keyed = sorted(
                    (-math.log(rng.random() or 1e-300) / i.reg.weight, n)
                    for n, i in enumerate(members)
                )
                out.extend(members[n] for _, n in keyed[:need])
            else:
                out.extend(_sample(group, need, rng))
        return out


def _decrement(counter: Counter[int], key: int) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]


def _sample(group: Group, need: int, rng: random.Random) -> list[Instance]:
    members = group.instances
    n = len(members)
    if len(group.weight_counts) == 1:
        # One weight for all: a weighted draw without replacement is a uniform sample.
        return [members[at] for at in rng.sample(range(n), need)]
    cumulative = group.cumulative
    # The order in which indices first appear in a sequence of independent weighted
    # draws is a weighted draw without replacement; ``choices`` bisects in C-speed batches.
    picked: dict[int, None] = {}
    population = range(n)
    for _ in range(8):
        missing = need - len(picked)
        if missing <= 0:
            break
        picked.update(
            dict.fromkeys(
                rng.choices(population, cum_weights=cumulative, k=missing + missing // 4 + 8)
            )
        )
    chosen = list(picked)[:need]
    # Weights so skewed that a few heavy instances keep coming back: fill the rest
    # uniformly (need < n / SHUFFLE_FACTOR here, so this ends quickly).
    while len(chosen) < need:
        at = rng.randrange(n)
        if at not in picked:
            picked[at] = None
            chosen.append(at)
    return [members[at] for at in chosen]
