"""napari plugin of rdcnet (npe2 manifest ``napari.yaml``; install with ``pip install "rdcnet[napari]"``).

Widgets "Segment with RDCNet" and "Train RDCNet", and sample data (synthetic nuclei with labels).
The work itself is in :mod:`rdcnet.napari._core`, which needs neither napari nor Qt.
"""
