#!/usr/bin/env python3
"""Spanish -> English verse pairs: data textgen was never tuned on (docs/controlled.md).

The Reina-Valera 1909 New Testament (Debian ``sword-text-sparv``, public domain) against the World
English Bible (Debian ``sword-text-web``, as in ``prepare_data.py``), verse by verse, split like the
shipped verse pairs (300 test, 300 validation, the rest train, in the same seeded order). Not
shipped: the controlled comparison is meant to be rerun on it with the same commands, only the data
paths changed.

Usage::

    python scripts/prepare_spanish_pairs.py --out es [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import prepare_data as data  # noqa: E402  (the SWORD reader and the Debian fetcher live there)

SPARV_DEB_NAME = "sword-text-sparv"
SPARV_DEB_VERSION = "2.60-1"
N_TEST = N_VALIDATION = 300


def module(unpacked: Path, name: str) -> Path:
    return data.find_one(unpacked, f"usr/share/sword/modules/texts/ztext/{name}/nt.bzz", name).parent


def build(workdir: Path, out: Path) -> dict[str, int]:
    roots = {}
    for name, version in ((SPARV_DEB_NAME, SPARV_DEB_VERSION), (data.WEB_DEB_NAME, data.WEB_DEB_VERSION)):
        deb = data.fetch_deb_package(name, version, workdir / "apt" / name)
        roots[name] = data.unpack_deb(deb, workdir / "x" / name)
    spanish = data.read_web_nt(module(roots[SPARV_DEB_NAME], "spaRV1909eb"))  # the same zText layout
    english = data.read_web_nt(module(roots[data.WEB_DEB_NAME], "engWEB2015eb"))
    data.cut_glossary(english)
    keys = [k for k in english if spanish.get(k, "").strip() and english[k].strip()]
    order = data.seeded_order(keys)
    splits = {
        "test": order[:N_TEST],
        "validation": order[N_TEST : N_TEST + N_VALIDATION],
        "train": order[N_TEST + N_VALIDATION :],
    }
    out.mkdir(parents=True, exist_ok=True)
    for split, ids in splits.items():
        rows = [json.dumps({"id": k, "source": spanish[k], "target": english[k]}, ensure_ascii=False) for k in ids]
        data.write_text(out / f"{split}.jsonl", "".join(row + "\n" for row in rows))
    return {split: len(ids) for split, ids in splits.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for train/validation/test.jsonl")
    parser.add_argument("--workdir", type=Path, help="where the packages are fetched (default: a temporary folder)")
    args = parser.parse_args(argv)
    try:
        if args.workdir:
            counts = build(args.workdir, args.out)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                counts = build(Path(tmp), args.out)
    except data.PrepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: " + ", ".join(f"{n:,} {split}" for split, n in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
