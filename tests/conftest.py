"""Session-wide setup shared by every test folder."""

from utils.allocator import retain_freed_memory

# The scripts keep freed memory for reuse (utils.allocator, set in run_cli); the suite runs under
# the same settings from its first test, so no test's allocator depends on which ran before it.
retain_freed_memory()
