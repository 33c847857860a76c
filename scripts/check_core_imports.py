"""Prove that `import poolwatch` needs only the core dependencies.

Imports poolwatch in a fresh interpreter and fails if any third-party module other than
the core dependencies (psycopg, prometheus_client, typing_extensions) got imported.
"""

from __future__ import annotations

import subprocess
import sys

CORE = {
    "poolwatch",
    "psycopg",
    "psycopg_binary",
    "psycopg_c",
    "prometheus_client",
    "typing_extensions",
    # Optional: imported only when installed, so that poolwatch's errors also derive from
    # psycopg_pool's (see poolwatch/errors.py); a plain install works without it.
    "psycopg_pool",
}

PROBE = """
import sys, sysconfig, json
before = set(sys.modules)
import poolwatch, poolwatch.pool, poolwatch.observe, poolwatch.errors
site = sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]
third_party = set()
for name, mod in list(sys.modules.items()):
    path = getattr(mod, "__file__", None) or ""
    if name not in before and path.startswith(site):
        third_party.add(name.split(".")[0])
print(json.dumps(sorted(third_party)))
"""


def main() -> int:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    imported = set(__import__("json").loads(out.stdout))
    extra = sorted(imported - CORE)
    if extra:
        print(f"import poolwatch pulled in non-core packages: {extra}", file=sys.stderr)
        return 1
    print(f"import poolwatch uses only: {sorted(imported)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
