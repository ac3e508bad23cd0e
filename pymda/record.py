"""Record: a tiny frozen, slotted value class.

Why not dataclasses: ``import dataclasses`` pulls in ``inspect`` and ``re``
and costs about 20 ms, three times a whole dovecot-lda delivery.  Records
give the same habits (frozen, slots, keyword construction, ``replace``)
for the price of a class statement.

    class Target(Record):
        __slots__ = ("kind", "path")
        _defaults = {"path": None}
"""


class Record:
    __slots__ = ()
    _defaults = {}

    def __init__(self, **kw):
        defaults = self._defaults
        for name in self.__slots__:
            if name in kw:
                value = kw.pop(name)
            elif name in defaults:
                value = defaults[name]
            else:
                raise TypeError(f"{type(self).__name__}: missing {name}")
            object.__setattr__(self, name, value)
        if kw:
            raise TypeError(f"{type(self).__name__}: unknown {', '.join(kw)}")

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is frozen")

    def __delattr__(self, name):
        raise AttributeError(f"{type(self).__name__} is frozen")

    def _astuple(self):
        return tuple(getattr(self, n) for n in self.__slots__)

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return self._astuple() == other._astuple()

    def __hash__(self):
        return hash((type(self).__name__,) + self._astuple())

    def __repr__(self):
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"{type(self).__name__}({fields})"

    def asdict(self):
        return {n: getattr(self, n) for n in self.__slots__}

    def replace(self, **changes):
        values = self.asdict()
        values.update(changes)
        return type(self)(**values)
