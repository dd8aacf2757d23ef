"""Loaded first by the Python that test clients run under other uids (see other_user_env).

That interpreter is Debian's /usr/bin/python3.11 (the venv's may sit under a 0700
home), and its ``site`` adds /usr/lib/python3/dist-packages, whose packages were
built for other versions of this venv's libraries (Debian's pyOpenSSL against the
venv's cryptography fails at import). The clients must see exactly the venv's
packages, as the venv's own interpreter would: drop the system's.
"""

import sys

sys.path[:] = [p for p in sys.path if not p.rstrip("/").endswith("dist-packages")]
