def to_python(*a, **k): raise NotImplementedError
