"""Builds the native data-plane core (``trustd.dataplane._native``) against the system OpenSSL.

Everything else about the package is declared in pyproject.toml. The compiler
and the OpenSSL headers come from ``scripts/system-deps.sh`` (gcc, libssl-dev).
``TRUSTD_NATIVE_CFLAGS`` adds compiler flags (``make test-asan`` builds a copy
with AddressSanitizer this way).
"""

import os
import shlex

from setuptools import Extension, setup

extra = shlex.split(os.environ.get("TRUSTD_NATIVE_CFLAGS", ""))

setup(
    ext_modules=[
        Extension(
            "trustd.dataplane._native",
            sources=["trustd/dataplane/_native.c"],
            libraries=["ssl", "crypto", "pthread"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                                "-Wno-missing-field-initializers", *extra],
            extra_link_args=[f for f in extra if f.startswith("-fsanitize")],
        )
    ]
)
