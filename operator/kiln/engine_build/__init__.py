"""EngineBuild reconciliation: pure planning (``plan``), observed Jobs (``jobs``), the Job
renderer (``render``). The Kopf handlers in ``kiln.handlers`` do the I/O around them."""
