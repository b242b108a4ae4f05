"""Split names, parsed once into a value.

  paper          the authors' recorded test identities
  val            for tuning: the paper split's test identities left out entirely, a
                 seeded part of its training identities held out as the test set
  random<k>      the k-th seeded random split of the protocol's sizes
  testsets<k>    CUHK03: the k-th of the 20 test sets in cuhk-03.mat
  new            CUHK03: the 767/700 protocol (Zhong et al. 2017) most later work reports
  random, testsets   (all of them: what `make data` builds and `make eval` averages)
"""
import dataclasses
import re

from core.errors import MtdnetError

KINDS = ("paper", "val", "random", "testsets", "new")
HELP = "paper | val | random | random<k> | testsets | testsets<k> | new (the last three CUHK03 only)"
_NAME = re.compile(r"(paper|val|new)|(random|testsets)(\d+)?")


@dataclasses.dataclass(frozen=True)
class Split:
    kind: str
    index: int = None        # None for paper / val, and for 'random' / 'testsets' meaning all

    @classmethod
    def parse(cls, name):
        if isinstance(name, Split):
            return name
        m = _NAME.fullmatch(str(name or ""))
        if not m:
            raise MtdnetError(f"unknown split '{name}'; valid: {HELP}")
        if m.group(1):
            return cls(m.group(1))
        return cls(m.group(2), None if m.group(3) is None else int(m.group(3)))

    @property
    def name(self):
        return self.kind if self.index is None else f"{self.kind}{self.index}"

    @property
    def concrete(self):
        """One prepared-data directory (not 'random' = all random<k>)."""
        return self.kind in ("paper", "val", "new") or self.index is not None

    @property
    def is_paper(self):
        return self.kind == "paper"

    @property
    def is_tuning(self):
        """Results on it are for choosing settings, never a test result."""
        return self.kind == "val"

    def require_concrete(self, what="this command"):
        if not self.concrete:
            raise MtdnetError(f"{what} needs one split ({self.kind}<k>, e.g. {self.kind}0), "
                              f"not '{self.name}'")
        return self

    def expand(self, count):
        """The concrete splits this one stands for, given how many of its kind there are."""
        if self.concrete:
            if self.index is not None and self.index >= count:
                raise MtdnetError(f"split '{self.name}': there are {self.kind}0..{self.kind}{count - 1}")
            return [self]
        return [Split(self.kind, k) for k in range(count)]

    def __str__(self):
        return self.name


PAPER = Split("paper")
