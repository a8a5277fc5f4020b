"""Beyond one machine: where deploykit runs on an existing distributed engine.

``storage`` is the input and output contract both ``deploykit predict`` engines share (a file, a
folder or a URL in; JSONL, or Parquet parts with a completion marker, out); ``ray`` is the Ray Data
engine (``deploykit predict --engine ray`` and the Python API ``deploykit.scale.ray.score``).
Nothing here schedules work itself: Ray does (docs/scale-out.md).
"""

RAY_VERSION = "2.60.0"  # deploykit[ray]'s pin (pyproject.toml): the RayJob's rayVersion and the --ray image's Ray
