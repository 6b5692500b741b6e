"""Slicer-side code of the DKUXNetSegment module that needs only the ``slicer`` namespace.

``supported`` says whether this Slicer can run the extension (it and this file are imported
before that check, so they stay valid Python 3.9); ``slicer_bridge`` converts between MRML
nodes and ``dkuxnet.io.Volume``; ``logic`` runs Segment, Suggest next, Estimate time and
Fine-tune as background jobs (one module per job: ``segment``, ``rank``, ``estimate``,
``fine_tune``; ``parameters``, ``tasks``, ``plots``, ``uncertainty`` beside them) and mirrors
their events into MRML nodes; ``controller`` is what both front ends drive: the current tasks,
what may start, what an ending does, what the views show; ``segment_region`` the box advice.
None imports qt, so all run on the ``slicer-core`` package in the test suite.
"""
