"""Generate `models_store/README.md`: store layout, atomic-publish rule and the manifest's JSON Schema.

    python -m service.store.schema --write models_store/README.md     (make schema)
    python -m service.store.schema --check models_store/README.md     (exit 1 when it is stale)

The schema comes from the pydantic models in `service.store.manifest`, so the README cannot drift from the
contract the service validates against. No torch here: this is the serving side's module.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from service.store.layout import MANIFEST_NAME, STAGING_PREFIX
from service.store.manifest import MODEL_NAME_PATTERN, SCHEMA_VERSION, Manifest

INTRO = f"""# The models store

This folder is the contract between the two halves of latentserve: `training/` publishes models here and
`service/` serves them, without torch. The shipped zoo (see `ZOO.md`) is rebuilt with `make models`.
This file is generated from `service/store/manifest.py` by `make schema`; do not edit it by hand.

## Layout

```
models_store/
  <model>/                     name matching {MODEL_NAME_PATTERN}
    <version>/                 1, 2, 3 ...; "latest" is the highest number
      {MANIFEST_NAME}            the contract (schema below), validated by the service at load
      encoder.onnx  decoder.onnx   one ONNX graph each (opset >= 17); batch is dimension 0 and dynamic
      encoder.pt    decoder.pt     TorchScript twins (optional backend)
      critic.onnx ...              extra graphs a family needs (the GAN's f-AnoGAN critic, DRAEM's segmenter)
      decoder.int8.onnx ...        reduced-precision twins (optional: graphs.<graph>.twins, with their checks)
    {STAGING_PREFIX}<uuid>/       a publish in progress: never read, never a version
    .lock                      the publisher's version-allocation lock (fcntl)
```

Every file of a version has its sha256 in the manifest's `files`; the service verifies them at load and
refuses a version that fails, saying why, while it keeps serving what it had.

## Atomic publish

A version appears whole or not at all:

1. The publisher writes every file into `<model>/{STAGING_PREFIX}<uuid>/`, beside the final folder (same
   file system), and hashes each one.
2. Under an exclusive lock on `<model>/.lock` it picks the version (highest existing + 1), writes
   `{MANIFEST_NAME}` last, and fsyncs the files and the folder.
3. It renames the staging folder to `<model>/<version>/` in one `rename(2)`, then fsyncs `<model>/`. If that
   number appeared meanwhile it takes the next one.
4. Any failure before the rename deletes the staging folder. Readers list only all-digit folder names, so
   they never see a staging folder or a half-written version.

Before anything is published, the exporter checks that onnxruntime and TorchScript agree with torch within
1e-4 (max abs difference) on random and real inputs at batch 1 and > 1; a model that fails is not published.

## Manifest JSON Schema (schema_version {SCHEMA_VERSION})
"""


def render() -> str:
    schema = json.dumps(Manifest.model_json_schema(), indent=2, sort_keys=False)
    return f"{INTRO}\n```json\n{schema}\n```\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m service.store.schema", description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--write", type=Path, help="write the README here")
    g.add_argument("--check", type=Path, help="exit 1 if this README differs from the generated one")
    args = p.parse_args(argv)
    text = render()
    if args.write:
        args.write.write_text(text)
    elif args.check:
        if not args.check.exists() or args.check.read_text() != text:
            sys.stderr.write(f"{args.check} is stale; run `make schema`\n")
            return 1
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
