"""``make models`` / ``python -m attnviz.download``: fetch every catalog checkpoint into the HF cache.

Only configs, tokenizer/processor files and safetensors weights are fetched
(never pickle checkpoints). Afterwards the app and CLI work offline
(``HF_HUB_OFFLINE=1``) with every model that downloaded.
"""
from __future__ import annotations

import sys

from .catalog import is_cached, load_catalog, offline

PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "merges.txt", "vocab.*"]


def main() -> int:
    from huggingface_hub import snapshot_download
    if offline():
        print("HF_HUB_OFFLINE is set: nothing can be downloaded.", file=sys.stderr)
        return 4
    failed = 0
    for entry in load_catalog().entries:
        if not entry.hub:
            continue
        try:
            snapshot_download(entry.hub, allow_patterns=PATTERNS)
            ok = is_cached(entry.hub)
            print(f"{entry.name:34} {'ok' if ok else 'no safetensors weights'}")
            failed += not ok
        except Exception as exc:   # network down, repo gone: report and go on with the rest
            failed += 1
            print(f"{entry.name:34} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
    print(f"{'all' if not failed else 'some'} checkpoints fetched; {failed} failed.")
    return 0 if not failed else 4


if __name__ == "__main__":
    raise SystemExit(main())
