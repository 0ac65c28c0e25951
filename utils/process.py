"""Whether a process recorded in a file (a lock, a run entry) is still alive."""

import os
import socket


def process_alive(pid, host):
    """True if ``pid`` runs on this host (and is not this process), False if it does not, None
    when ``host`` is another machine (which cannot be checked from here)."""
    if host != socket.gethostname():
        return None
    if not isinstance(pid, int) or isinstance(pid, bool) or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True
