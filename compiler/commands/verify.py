"""Check a bundle (folder or .tar) exactly as devices do: signature, schema, sha256 of every file, head."""

from __future__ import annotations

from infantino.runtime.bundle import load_bundle  # the runtime's verifier: one code path for device and CLI

HELP = "verify a bundle as a device would"


def add_arguments(p) -> None:
    p.add_argument("bundle", help="bundle folder or .tar")
    p.add_argument("--pub", "--public-key", dest="pub", help="Ed25519 public key (PEM) (default $INFANTINO_PUBLIC_KEY)")


def run(args) -> int:
    b = load_bundle(args.bundle, public_key=args.pub)
    m = b.manifest
    failed = [e.file for e in m.parity if not e.passed]
    print(f"OK {args.bundle}: signature, schema, sha256 of every listed file and the head verified")
    print(f"model {m.model.name} v{m.model.version} ({m.model.backbone}), target {m.target}, precision {m.precision}, "
          f"head v{b.head.version}, extractor {m.extractor_id[:12]}…")
    for a in m.artifacts:
        print(f"  {a.file:32s} {a.format:14s} {a.precision:5s} {a.layout} {a.size_bytes:>10d} B")
    if failed:
        print(f"note: the bundle was written with --allow-parity-failure; failed parity: {', '.join(failed)}")
    return 0


