"""Slicer-side code of the DKUXNetSegment module that needs only the ``slicer`` namespace.

``slicer_bridge`` converts between MRML nodes and ``dkuxnet.io.Volume``; ``logic`` runs Segment
and Fine-tune as background jobs and mirrors their events into MRML nodes. Neither imports qt,
so both run on the ``slicer-core`` package in the test suite.
"""
