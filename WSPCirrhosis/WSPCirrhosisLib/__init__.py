"""Helpers of the WSPCirrhosis Slicer module.

Qt-free, taking the scene as an argument (tested on a slicer-core scene): nodes.py and
outputs.py (MRML <-> SimpleITK images and result nodes), analysis.py (one prediction in this
process), process.py and job.py (the same prediction as a child process: command, JSON-lines
protocol, states, result read back), panel.py (the panel's decisions). Needing the Slicer
application: runner.py (launch, Apply <-> Cancel), dependencies.py and display.py. Nothing is
imported here, so the module file can import each helper only when it is needed.
"""
