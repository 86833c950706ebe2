"""Create an Ed25519 key pair: DIR/signing.key (private, mode 0600, never put it in a bundle) and DIR/signing.pub
(for devices)."""

from __future__ import annotations

from infantino.runtime.contract.signing import key_id, load_public_key

from ..bundle_writer import keygen

HELP = "create the Ed25519 signing key pair"


def add_arguments(p) -> None:
    p.add_argument("--out", required=True, help="folder for signing.key and signing.pub")
    p.add_argument("--force", action="store_true", help="replace an existing key pair")


def run(args) -> int:
    priv, pub = keygen(args.out, force=args.force)
    print(f"private key: {priv} (keep it secret; pass it as --key)")
    print(f"public key:  {pub} (install it on devices)")
    print(f"fingerprint: {key_id(load_public_key(pub))} (what a device's ota.revoked_keys lists to retire it)")
    return 0


