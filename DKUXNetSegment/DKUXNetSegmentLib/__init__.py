"""Slicer-side code of the DKUXNetSegment module that needs only the ``slicer`` namespace.

``supported`` says whether this Slicer can run the extension (it and this file are imported
before that check, so they stay valid Python 3.9); ``slicer_bridge`` converts between MRML
nodes and ``dkuxnet.io.Volume``; ``logic`` runs Segment and Fine-tune as background jobs and
mirrors their events into MRML nodes. None imports qt, so all run on the ``slicer-core``
package in the test suite.
"""
