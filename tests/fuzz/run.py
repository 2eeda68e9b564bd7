"""Coverage-guided fuzzing of one target with atheris (libFuzzer).

    python tests/fuzz/run.py TARGET [libFuzzer options] [CORPUS_DIR...]

``scripts/fuzz SECONDS`` runs every target for SECONDS with the repository corpus as
seeds (new inputs go to a scratch directory; merge the good ones into
``tests/fuzz/corpus/TARGET`` with ``-merge=1``).  A crash (an exception other than the
target's documented ones, or a broken bound) writes the input next to the scratch
corpus and exits non-zero.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))
# Coverage is collected for tunray's own packages only (the standard library and the
# cryptography wheel would only slow instrumentation down).
with atheris.instrument_imports(include=["tunray", "tunray_vless", "tunray_transports", "tunray_stack_python"]):
    import targets


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in targets.TARGETS:
        sys.exit(f"usage: run.py TARGET [libFuzzer args]; targets: {', '.join(targets.TARGETS)}")
    target = targets.TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
