import os

# Set before torch starts OpenMP: busy-waiting worker threads made a 2-core CPU run of the demo
# model up to 50x slower whenever another process used a core; passive waiting costs nothing.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .cli import main  # noqa: E402

raise SystemExit(main())
