"""embedsvc: a retrieval and embedding service for sentence representations.

Every part works as a library without the server::

    from embedsvc.strategies import get_strategy, Role
    vectors = get_strategy("mean").encode(["a sentence"], Role.QUERY).vectors
"""

__version__ = "0.1.0"
