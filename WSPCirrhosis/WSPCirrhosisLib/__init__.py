"""Helpers of the WSPCirrhosis Slicer module.

nodes.py and outputs.py (MRML <-> SimpleITK images and result nodes) and analysis.py (one
prediction) import no Qt and take the scene as an argument; runner.py, dependencies.py and
display.py hold the code that needs the Slicer application. Nothing is imported here, so the
module file can import each helper only when it is needed.
"""
