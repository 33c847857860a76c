"""The one compiled part: the fast path of sync connection() blocks (src/poolwatch/pool/_hot.c).

Everything else is in pyproject.toml. The extension is optional: without a C compiler
the install still succeeds and the pools use their Python blocks. It is not built where
it would be wrong (a free-threaded CPython: it relies on the GIL) or useless (not
CPython), nor when POOLWATCH_NO_EXTENSION=1.
"""

import os
import platform
import sysconfig

from setuptools import Extension, setup

wanted = (
    platform.python_implementation() == "CPython"
    and not sysconfig.get_config_var("Py_GIL_DISABLED")
    and os.environ.get("POOLWATCH_NO_EXTENSION") != "1"
)
setup(
    ext_modules=[Extension("poolwatch.pool._hot", ["src/poolwatch/pool/_hot.c"], optional=True)]
    if wanted
    else []
)
